"""``distributed.initialize``: which way a process joins, from faked environments, and real runs."""

import pytest
from localhost import base_env, free_port, run_processes

from elm_jax.config import DistributedConfig, default_config, from_config_dict
from elm_jax.errors import ConfigError
from elm_jax.parallel.distributed import initialize, resolve, slurm_tasks_per_node

SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_NTASKS": "16",
              "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}


def test_nothing_to_join_is_a_single_process(monkeypatch):
    monkeypatch.setattr("elm_jax.parallel.distributed._on_tpu_vm", lambda environ: False)
    assert resolve(environ={}).mode == "single"
    # initialize() then leaves jax alone: no coordinator, no error, the 8 local devices stay.
    assert initialize(environ={}).mode == "single"
    import jax
    assert not jax.distributed.is_initialized() and jax.process_count() == 1


def test_explicit_values_from_the_environment():
    launch = resolve(environ={"ELM_COORDINATOR_ADDRESS": "10.0.0.2:8476", "ELM_NUM_PROCESSES": "4",
                              "ELM_PROCESS_ID": "3", "ELM_LOCAL_DEVICE_IDS": "0,1"})
    assert launch.mode == "explicit"
    assert launch.kwargs == dict(coordinator_address="10.0.0.2:8476", num_processes=4, process_id=3,
                                 local_device_ids=[0, 1], cluster_detection_method="deactivate",
                                 initialization_timeout=300)


def test_config_wins_over_the_environment_and_jax_address_is_accepted():
    cfg = DistributedConfig(num_processes=2, process_id=0, initialization_timeout=30)
    launch = resolve(cfg, {"JAX_COORDINATOR_ADDRESS": "head:1234", "ELM_NUM_PROCESSES": "8",
                           "ELM_PROCESS_ID": "5"})
    assert (launch.kwargs["coordinator_address"], launch.kwargs["num_processes"],
            launch.kwargs["process_id"], launch.kwargs["initialization_timeout"]) == ("head:1234", 2, 0, 30)


def test_config_overrides_reach_the_distributed_section():
    cd = default_config()
    cd.distributed.coordinator_address = "10.1.2.3:8476"
    cd.distributed.num_processes = 2
    cd.distributed.process_id = 1
    cd.distributed.local_device_ids = (0, 1)
    cfg = from_config_dict(cd).distributed
    assert resolve(cfg, {}).kwargs["local_device_ids"] == [0, 1]


@pytest.mark.parametrize("environ,message", [
    ({"ELM_NUM_PROCESSES": "2", "ELM_PROCESS_ID": "0"}, "coordinator_address"),
    ({"ELM_COORDINATOR_ADDRESS": "h:1", "ELM_PROCESS_ID": "0"}, "num_processes"),
    ({"ELM_COORDINATOR_ADDRESS": "h:1", "ELM_NUM_PROCESSES": "2"}, "process_id"),
    ({"ELM_COORDINATOR_ADDRESS": "h", "ELM_NUM_PROCESSES": "2", "ELM_PROCESS_ID": "0"}, "host:port"),
    ({"ELM_COORDINATOR_ADDRESS": "h:1", "ELM_NUM_PROCESSES": "2", "ELM_PROCESS_ID": "2"}, r"\[0, 2\)"),
    ({"ELM_COORDINATOR_ADDRESS": "h:1", "ELM_NUM_PROCESSES": "two"}, "ELM_NUM_PROCESSES.*integer"),
    ({"ELM_DISTRIBUTED": "mpi"}, "ELM_DISTRIBUTED.*slurm"),
    ({"ELM_DISTRIBUTED": "slurm"}, "SLURM_JOB_ID.*srun"),
])
def test_incomplete_or_wrong_settings_name_the_fix(environ, message):
    with pytest.raises(ConfigError, match=message):
        resolve(environ=environ)


@pytest.mark.parametrize("field,value,message", [
    ("coordinator_address", "nohost", "host:port"),
    ("process_id", 4, "below distributed.num_processes"),
    ("mode", "mpi", "distributed.mode"),
])
def test_distributed_config_validation(field, value, message):
    cd = default_config()
    cd.distributed.num_processes = 4
    cd.distributed[field] = value
    with pytest.raises(ConfigError, match=message):
        from_config_dict(cd)


def test_one_process_needs_no_coordinator():
    assert resolve(environ={"ELM_NUM_PROCESSES": "1"}).mode == "single"
    assert resolve(environ={**SLURM_STEP, "SLURM_NTASKS": "1"}).mode == "single"


def test_slurm_one_process_per_gpu_leaves_device_choice_to_jax():
    launch = resolve(environ=SLURM_STEP)
    assert launch.mode == "slurm"
    assert launch.kwargs == dict(cluster_detection_method="slurm", initialization_timeout=300)


def test_slurm_one_process_per_node_takes_every_visible_gpu():
    environ = {**SLURM_STEP, "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
               "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    assert resolve(environ=environ).kwargs["local_device_ids"] == [0, 1, 2, 3]
    del environ["CUDA_VISIBLE_DEVICES"]
    environ["SLURM_GPUS_ON_NODE"] = "8"
    assert resolve(environ=environ).kwargs["local_device_ids"] == list(range(8))


def test_slurm_task_counts_are_expanded():
    assert slurm_tasks_per_node({"SLURM_TASKS_PER_NODE": "8(x2),4,1(x3)"}) == [8, 8, 4, 1, 1, 1]
    with pytest.raises(ConfigError, match="tasks per node"):
        slurm_tasks_per_node({"SLURM_TASKS_PER_NODE": "8x2"})


def test_tpu_vm_defers_to_jax_metadata_detection():
    multi = {"TPU_WORKER_HOSTNAMES": "t1k-w0,t1k-w1,t1k-w2,t1k-w3", "TPU_WORKER_ID": "2"}
    launch = resolve(environ=multi)
    assert launch.mode == "tpu" and launch.kwargs == dict(initialization_timeout=300)
    assert resolve(environ={"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}).mode == "single"
    # Explicit settings beat the cluster: a user's own coordinator on TPU VMs is honoured.
    explicit = {**multi, "ELM_COORDINATOR_ADDRESS": "w0:1", "ELM_NUM_PROCESSES": "4",
                "ELM_PROCESS_ID": "2"}
    assert resolve(environ=explicit).mode == "explicit"


def test_single_mode_ignores_the_cluster():
    assert resolve(DistributedConfig(mode="single"), SLURM_STEP).mode == "single"


def _expect_two_processes_see_each_other(results, mode):
    # Process p contributes rows [10p, 10p + 1]: the sum and gather need both processes.
    for index, result in enumerate(sorted(results, key=lambda r: r["process_index"])):
        assert result["mode"] == mode and result["process_index"] == index
        assert (result["process_count"], result["local_devices"], result["global_devices"]) == (2, 2, 4)
        assert result["total"] == 0 + 1 + 10 + 11
        assert result["gathered"] == [0.0, 1.0, 10.0, 11.0]


def test_two_processes_join_through_an_explicit_coordinator():
    address = f"127.0.0.1:{free_port()}"
    envs = [{**base_env(2), "ELM_COORDINATOR_ADDRESS": address, "ELM_NUM_PROCESSES": "2",
             "ELM_PROCESS_ID": str(i)} for i in range(2)]
    _expect_two_processes_see_each_other(run_processes(["allgather"], envs), "explicit")


def test_two_processes_join_through_a_faked_slurm_step():
    # jax's own SLURM detection picks the coordinator (first node of the step) and the ids.
    slurm = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
             "SLURM_STEP_TASKS_PER_NODE": "2", "JAX_COORDINATOR_PORT": str(free_port())}
    envs = [{**base_env(2), **slurm, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)} for i in range(2)]
    _expect_two_processes_see_each_other(run_processes(["allgather"], envs), "slurm")
