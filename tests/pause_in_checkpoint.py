"""Run ``python -m MODULE ARGS`` with every checkpoint write pausing half-way, so that a test can
kill the process in the middle of one: ``python tests/pause_in_checkpoint.py SECONDS MODULE ARGS``.

The pause is installed here, by patching the file object ``extrap.checkpoint`` writes through;
production code has no test hook.
"""

import builtins
import runpy
import sys
import time

from extrap import checkpoint


class _PausingFile:
    def __init__(self, f, pause: float):
        self._f, self._pause = f, pause

    def write(self, data: bytes) -> int:
        if len(data) < 1024:  # the header line
            return self._f.write(data)
        half = len(data) // 2
        self._f.write(data[:half])
        self._f.flush()
        time.sleep(self._pause)
        return half + self._f.write(data[half:])

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def main() -> None:
    pause, module, *args = sys.argv[1:]

    def pausing_open(file, mode="r", *a, **kw):
        f = builtins.open(file, mode, *a, **kw)
        return _PausingFile(f, float(pause)) if str(file).endswith(".tmp") and "w" in mode else f

    checkpoint.open = pausing_open  # module-level name lookup in extrap.checkpoint.save
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
