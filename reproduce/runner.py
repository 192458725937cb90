"""The command line and run loop shared by the per-item scripts (docs/reproducing.md, "Reproducing the
paper's tables and figures")::

    python -m reproduce.<item> [--scale paper|smoke] [--engine auto|processes|horovod|virtual|single]
                               [--workers K] [--only CELL[,CELL]] [--variants V[,V]] [--seeds N] [--data-dir DIR]
                               [--out DIR] [--jobs N] [key=value ...]

``reproduce.config`` resolves and checks every run's settings before any work starts. For every
(variant, cell, seed) not yet finished in ``<out>/records.jsonl``, one training run, in its own
folder (``reproduce.rundir``), one after another or, with ``--jobs N``, N at a time in processes
of their own. Rerunning the same command resumes an interrupted cell and skips finished ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch
import yaml

from extrap.checkpoint import CheckpointError
from reproduce import ITEMS
from reproduce.config import (ConfigError, DataError, Run, first_line, load_config, load_task, own_item, paper_on_cpu,
                              parse_args, plan, prepare_data, check_data_paths, train_config)
from reproduce.rundir import (FULL_DISK, OutLock, append_evaluation, append_line, check_identities, check_out,
                              finished_runs, git_info, run_dir, versions)

def execute(run: Run, engine, out: Path, progress: bool, ready=lambda: None) -> dict:
    """One run: its data loaded and checked, then ``ready()``, its folder, and training."""
    from extrap.train import train
    from models import build_model

    s = run.settings
    directory = run_dir(out, run)
    cfg = train_config(s)
    torch.manual_seed(run.seed)  # the model's x_0; processes share rank 0's
    task, model_kwargs = load_task(s, engine.device)
    ready()
    if engine.is_main:
        directory.mkdir(parents=True, exist_ok=True)
    engine.barrier()
    model = build_model(s["model"], **{**model_kwargs, **s.get("model_kwargs", {})})
    provenance = {"item": run.item, "variant": run.variant, "cell": run.cell, "seed": run.seed,
                  "config": s, "git": git_info(), "versions": versions(), "engine": engine.kind,
                  "world_size": engine.world_size, "device": str(engine.device)}
    if engine.is_main:
        (directory / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    metrics = directory / "metrics.jsonl"
    board = None
    if s.get("tensorboard") and engine.is_main:
        from reproduce.tensorboard import TensorBoardLog

        board = TensorBoardLog(directory / "tensorboard")

    def on_eval(point):
        append_evaluation(metrics, point)
        if board is not None:
            board.evaluation(point)

    try:
        record = train(cfg, engine, model, task, log=print if engine.is_main else None, on_eval=on_eval,
                       on_trace=None if board is None else board.trace, checkpoint=directory / "checkpoint",
                       progress=progress, desc=f"{run.variant}/{run.cell} seed {run.seed}")
    finally:
        if board is not None:
            board.close()
    if engine.is_main:  # exactly one line per evaluation, also after a resume
        metrics.write_text("".join(json.dumps(p) + "\n" for p in record["curve"]))
    record.update(item=run.item, variant=run.variant, cell=run.cell, **run.shown, **run.protocol,
                  eval_split=getattr(task, "eval_split", None), seed=run.seed, config=s, git=provenance["git"])
    return record


def main(item: str, argv=None) -> int:
    """Run ``item``'s plan; 0 when done, 2 for a bad configuration or argument, 130 when
    interrupted (Ctrl-C: the same command resumes from the last checkpoint)."""
    try:
        return _main(item, argv)
    except KeyboardInterrupt:
        if sys.stderr.isatty():
            print(file=sys.stderr)  # off a progress bar's line
        _refusal(item)("interrupted; the same command resumes from the last checkpoint")
        return 130


def _main(item: str | None, argv=None) -> int:
    git_info()  # the commit of the code this process imported, for every record it writes
    args = parse_args(item, argv)
    out = Path(args.out or f"runs/{args.scale}")
    say = _refusal(item)
    try:
        if args.config is not None:
            item = own_item(args.config)
            say = _refusal(item)
        elif item is None:
            raise ConfigError("--config FILE: expected your item file (or run an item's own script, "
                              f"python -m reproduce.ITEM for ITEM in {', '.join(ITEMS)})")
        runs = plan(item, args)
        if not runs:
            raise ConfigError(f"--only: no run selected for {item}")
        if args.scale == "paper" and not args.cpu_ok and not torch.cuda.is_available():
            raise ConfigError(paper_on_cpu(runs))
        check_out(out)  # before anything is fetched
        prepare_data(runs)
        check_data_paths(runs)
    except ConfigError as e:
        return say(e)
    try:
        from extrap.engines.launch import world_info_from_env

        world = world_info_from_env()
    except ValueError as e:
        return say(e)
    rank = world.rank
    if args.jobs > 1 and world.world_size > 1:
        return say(f"--jobs {args.jobs}: under a launcher each process is one worker of one run; run without --jobs")
    created = not out.exists()
    with contextlib.ExitStack() as stack:
        lock = None
        try:
            if rank == 0:  # one writer per folder: the main rank holds the lock throughout, before reading
                out.mkdir(parents=True, exist_ok=True)
                lock = stack.enter_context(OutLock(out))
            done = finished_runs(out / "records.jsonl")
            check_identities(runs, out, done)
            code = None
        except ConfigError as e:
            code = say(e)
        if code is None and "tuning" in load_config(item)["scales"][args.scale]:
            code = _tune_and_confirm(item, args, runs, out, say)
        elif code is None:
            code = _run_all(item, args, runs, out, done)
        if code == 2 and created and lock is not None:  # refused before any work: leave nothing behind
            lock.discard()
    if code == 2 and created and rank == 0:
        with contextlib.suppress(OSError):
            out.rmdir()
    return code


def _tune_and_confirm(item: str, args: argparse.Namespace, runs: list[Run], out: Path, say) -> int:
    """A scale with a ``tuning`` section: the paper's tuning protocol, then confirmation
    (``reproduce.tuning``); every stage through ``_run_all``, skipping what is finished."""
    from reproduce.tuning import run_protocol

    def execute_runs(selected: list[Run]) -> int:
        done = finished_runs(out / "records.jsonl")
        check_identities(selected, out, done)
        return _run_all(item, args, selected, out, done)

    try:
        return run_protocol(item, args, runs, out, execute_runs, say=lambda m: print(m, flush=True))
    except ConfigError as e:
        return say(e)


def _refusal(item: str | None):
    """A refusal printer: the main rank's line only (every rank of a launch refuses alike); returns 2.
    Its lines begin ``reproduce.<item>:``, or ``reproduce:`` before an own item file is read."""
    name = "reproduce" if item is None else f"reproduce.{item}"

    def say(error) -> int:
        try:
            from extrap.engines.launch import world_info_from_env

            main = world_info_from_env().rank == 0
        except ValueError:
            main = True
        if main:
            print(f"{name}: {error}", file=sys.stderr)
        return 2
    return say


def _run_all(item: str, args: argparse.Namespace, runs: list[Run], out: Path, done: dict) -> int:
    from extrap.engines import make_engine

    engines: dict = {}

    def engine_for(settings):
        """One engine per worker count (Table 3 varies K); a launcher fixes it for processes."""
        key = settings.get("workers")
        if key not in engines:
            engines[key] = make_engine(settings.get("engine", "auto"), key)
        return engines[key]

    try:
        engine = engine_for(runs[0].settings)
    except (ValueError, RuntimeError, ImportError) as e:  # an engine that cannot start: said in one line
        return _refusal(item)(first_line(e))
    if engine.launched:
        mismatched = {r.settings.get("workers") for r in runs} - {engine.world_size, None}
        if mismatched and engine.is_main:
            print(f"note: runs with K in {sorted(mismatched)} need their own launch "
                  f"(mpirun -np K); this one runs K={engine.world_size}")
        runs = [r for r in runs if r.settings.get("workers") in (engine.world_size, None)]
    resolved: dict = {}  # each (variant, cell) once, as its first seed runs it
    for r in runs:
        resolved.setdefault(f"{r.variant}/{r.cell}", {k: v for k, v in r.settings.items() if k != "seed"})
    text = yaml.safe_dump({"item": item, "scale": args.scale, "engine": engine.kind,
                           "workers": engine.world_size, "runs": resolved}, sort_keys=False)
    said: list = []

    def say_resolved():
        """Once the first run's data has loaded: the resolved settings, printed and saved."""
        if engine.is_main and not said:
            print(text)
            (out / f"{item}.{args.scale}.resolved.yaml").write_text(text)
            said.append(True)

    if all(run.key in done for run in runs):
        say_resolved()
    records = out / "records.jsonl"
    for run in runs:
        if run.key in done and engine.is_main:
            print(f"skip {run.variant}/{run.cell} seed {run.seed}: already in {records}")
    runs = [run for run in runs if run.key not in done]
    if args.jobs > 1:  # each run in a process of its own, with its own engine
        code = _run_parallel(item, args.jobs, runs, out, engine, say_resolved)
    else:
        code = _run_in_turn(item, args, runs, out, engine, engine_for, say_resolved)
    for e in engines.values():
        e.close()
    return code


def _run_in_turn(item: str, args: argparse.Namespace, runs: list[Run], out: Path, engine, engine_for,
                 say_resolved) -> int:
    """``runs`` one after another in this process; 0, or the first failure's status."""
    for run in runs:
        run_engine = engine if engine.launched else engine_for(run.settings)
        try:
            record = execute(run, run_engine, out, progress=not args.no_progress, ready=say_resolved)
        except Exception as e:  # noqa: BLE001 - reported, then this rank ends
            code = _failure(item, engine, run, e)
            if code is not None:
                return code
            if not engine.launched:
                raise
            _abort_rank(item, engine, run, e)
        code = _keep(item, engine, run, record, out / "records.jsonl")
        if code:
            return code
    return 0


def _keep(item: str, engine, run: Run, record: dict, records: Path) -> int:
    """A finished run's record appended (the main rank) and its line printed; 0, or 1 when the
    record cannot be written."""
    if not engine.is_main:
        return 0
    try:
        append_line(records, record)
    except OSError as e:
        return _end(item, engine, run, 1, f"cannot append its record to {records} ({e.strerror or e}); "
                                          f"nothing was appended. Rerun the same command when that is "
                                          f"mended: the run resumes from its last checkpoint")
    final = record["final"]
    print(f"{run.variant}/{run.cell} seed {run.seed}: {record['status']}, "
          + ", ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float)), flush=True)
    return 0


def _failure(item: str, engine, run: Run, error: BaseException) -> int | None:
    """A run that raised, said in one line with its status where that is all it takes (a checkpoint
    or data it cannot use, a full disk); None for anything else."""
    if isinstance(error, (CheckpointError, DataError)):  # data or a checkpoint this run cannot use
        return _end(item, engine, run, 2, str(error), own=isinstance(error, CheckpointError))
    if isinstance(error, OSError) and error.errno in FULL_DISK:  # a full disk while saving: the checkpoints stand
        return _end(item, engine, run, 1, f"cannot write {error.filename or 'a file'} ({error.strerror or error}); "
                                          f"mend that and rerun the same command: the run resumes from its last "
                                          f"checkpoint")
    return None


def _in_own_process(run: Run, out: Path, threads: int | None, parent: int, send) -> None:
    """One run of ``--jobs``, in a process of its own: its own engine, ``threads`` CPU threads, its
    output (Python's and the libraries') in its folder's ``log.txt``. Sends ``("ok", record)`` or
    ``("error", exception, traceback)`` to the runner; ends at once on Ctrl-C, or when the runner
    is gone (its checkpoints stand either way)."""
    import threading
    import traceback

    def watch():  # a runner killed outright (SIGKILL) cannot end its runs: they end themselves
        while os.getppid() == parent:
            threading.Event().wait(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # also for a processes engine's own thread share
        torch.set_num_threads(threads)
    directory = run_dir(out, run)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "log.txt", "a", encoding="utf-8") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        from extrap.engines import make_engine

        engine = make_engine(run.settings.get("engine", "auto"), run.settings.get("workers"))
        try:
            result = ("ok", execute(run, engine, out, progress=False))
        finally:
            engine.close()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group
        os._exit(130)
    except Exception as e:  # noqa: BLE001 - the runner reports it as the serial loop would
        traceback.print_exc()
        result = ("error", e, traceback.format_exc())
    sys.stdout.flush()
    try:
        send.send(result)
    except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
        send.send(("error", RuntimeError(f"{type(result[1]).__name__}: {result[1]}"), result[2]))
    send.close()


def _run_parallel(item: str, jobs: int, runs: list[Run], out: Path, engine, say_resolved) -> int:
    """``runs``, ``jobs`` at a time, each in a spawned process of its own (``_in_own_process``; it
    imports the project as it starts, and its record names that commit); the records appended
    here, in the order the runs end. The CPU threads are shared out (``OMP_NUM_THREADS``, where
    set, is each process's own). After a run fails, or its record cannot be written, no further
    run starts; those running finish and keep their records, then the first failure is reported
    as the serial loop reports it. On Ctrl-C, or a signal to the runner alone, every run process
    is ended at once, its checkpoints kept."""
    import multiprocessing
    from multiprocessing.connection import wait

    if not runs:
        return 0
    say_resolved()
    at_once = min(jobs, len(runs))  # a stage of one run (an extended grid's point) gets every thread
    threads = None if os.environ.get("OMP_NUM_THREADS") else max(1, torch.get_num_threads() // at_once)
    print(f"{len(runs)} runs, {at_once} at a time; each run's output is in its folder's log.txt "
          f"({run_dir(out, runs[0]) / 'log.txt'}, ...)", flush=True)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    records, pending, running, first = out / "records.jsonl", list(runs), {}, None
    try:
        while running or (pending and first is None):  # after a failure: only those running
            while pending and len(running) < jobs and first is None:
                run = pending.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_in_own_process, args=(run, out, threads, os.getpid(), send),
                                          name=f"{run.variant}/{run.cell} seed {run.seed}")
                process.start()
                send.close()  # the child holds the only sending end: its exit is an end of file here
                running[receive] = (process, run)
            for receive in wait(list(running)):
                process, run = running.pop(receive)
                try:
                    result = receive.recv()
                except EOFError:  # ended without a word: killed (out of memory?)
                    result = ("lost",)
                receive.close()
                process.join()
                if result[0] == "ok":
                    if _keep(item, engine, run, result[1], records):  # said there
                        first = first or (run, ("unwritten",), None)
                else:
                    first = first or (run, result, process.exitcode)
    except KeyboardInterrupt:
        for process, _ in running.values():
            process.terminate()  # a signal to the runner alone: its runs end too
        for process, _ in running.values():
            process.join()
        raise
    return 0 if first is None else _failed_in_own_process(item, engine, *first)


def _failed_in_own_process(item: str, engine, run: Run, result: tuple, exitcode: int | None) -> int:
    """The first failure of ``--jobs``, said as the serial loop says it: one line where that is
    all it takes, else the run process's traceback and a line naming the run (exit 1)."""
    if result[0] == "unwritten":
        return 1
    if result[0] == "lost":
        return _end(item, engine, run, 1, f"its process ended before the run did (exit status {exitcode}); "
                                          "rerun the same command: the run resumes from its last checkpoint")
    _, error, trace = result
    code = _failure(item, engine, run, error)
    if code is not None:
        return code
    print(trace, file=sys.stderr, end="")
    return _end(item, engine, run, 1, f"failed: {type(error).__name__}: {error} (its log.txt has the rest; rerun "
                                      "the same command to resume from the last checkpoint)")


def _end(item: str, engine, run: Run, code: int, text: str, own: bool = False) -> int:
    """Say ``text`` about ``run`` in one line (the main rank, under a launcher, unless it is this
    rank's ``own`` trouble, such as its checkpoint) and end with status ``code``: returned, or at
    once under a launcher (the others may be mid-collective)."""
    if engine.is_main or not engine.launched or own:
        rank = f"rank {engine.rank}: " if engine.launched and not engine.is_main else ""
        print(f"reproduce.{item}: {rank}{run.variant}/{run.cell} seed {run.seed}: {text}", file=sys.stderr, flush=True)
    if engine.launched:
        os._exit(code)
    return code


def _abort_rank(item: str, engine, run: Run, error: Exception) -> None:
    """A failed collective (a dead or hung rank: a timeout, a closed connection) or any error
    under a launcher: print the traceback, then one line saying so, and end this process at once.
    A normal exit could wait forever in torch.distributed's teardown for the missing rank; the
    launcher then ends the others. The cell keeps its checkpoints, so the same command resumes it."""
    import traceback

    traceback.print_exc()
    print(f"reproduce.{item}: rank {engine.rank}: {run.variant}/{run.cell} seed {run.seed} failed: "
          f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''} "
          f"(rerun the same command to resume from the last checkpoint)", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
