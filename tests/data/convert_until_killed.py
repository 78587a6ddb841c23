"""Run a conversion that dies hard (``os._exit``: no cleanup, like SIGKILL) after N records.

    python convert_until_killed.py JOB_JSON NUM_SHARDS RECORDS
"""

import json
import os
import sys

from array_record.python import array_record_module

from elm_jax.data import shards

Writer = array_record_module.ArrayRecordWriter
written = 0


class DyingWriter:
    """The real writer, but the process is killed in the middle of writing record ``RECORDS``."""

    def __init__(self, path, options):
        self._writer = Writer(path, options)

    def write(self, record):
        global written
        if written == int(sys.argv[3]):
            os._exit(9)
        self._writer.write(record)
        written += 1

    def close(self):
        self._writer.close()


if __name__ == "__main__":
    array_record_module.ArrayRecordWriter = DyingWriter
    shards.convert(shards.Job(**json.loads(sys.argv[1])), num_shards=int(sys.argv[2]), workers=0)
    sys.exit("the conversion finished although it should have been killed")
