"""Runs the ``pararnn-hf`` command with transformers' safetensors writes wrapped: the write whose
path matches ``$KILL_WRITE_MATCH`` (a regex) puts half of its bytes on disk and then SIGKILLs
the process, as a crash in the middle of a save would."""

import os
import re
import signal
import sys

import transformers.modeling_utils as modeling_utils
from safetensors.torch import save as serialize

from pararnn_hf.cli import main

_real_save = modeling_utils.safe_save_file
_pattern = re.compile(os.environ["KILL_WRITE_MATCH"])


def half_then_kill(tensors, filename, metadata=None):
    if _pattern.search(str(filename)):
        data = serialize(tensors, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_save(tensors, filename, metadata=metadata)


modeling_utils.safe_save_file = half_then_kill

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
