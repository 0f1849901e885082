"""Running a stage's distilabel pipeline on a Ray cluster (``cm2data run PIPELINE.yaml --ray ADDRESS``).

:func:`run_rows <cm2data.pipelines.run.run_rows>` builds the same steps as for a local run; under :func:`on_ray` it
runs them with distilabel 1.5.3's ``RayPipeline`` (one Ray actor per step replica) on the cluster at ``address``
(``auto``, ``HOST:PORT`` of a head node, or ``ray://HOST:10001``), with every LLM-using step replicated
``replicas`` times. Outputs, journals and reports are the local run's: the driver (the ``cm2data`` process) still
collects the rows, and the steps journal each finished row into the stage's work folder, which on a multi-node
cluster must be on storage every node mounts at the same path (docs/scale.md).

A lost worker (a step actor that dies: its process killed, its node gone) is noticed by a watchdog within a second;
distilabel 1.5.3 would otherwise wait for it forever. The stage's pipeline is then started again, up to ``retries``
times (default 2), in a fresh Ray job: every row is sent through again, rows already journaled are answered from the
journals, so finished rows are not redone and none is duplicated. Past the retries, :class:`RayWorkerLost` says
which step died; running the same command again resumes the same way.

Ray is not a dependency of the toolkit: it lives in its own environment (``scripts/install_ray.sh``), whose
``cm2data`` command is the one to run with ``--ray``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cm2data.llm import LLMError

#: What the step actors get in their environment (the driver's own offline settings, so that no actor phones home).
ACTOR_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DISTILABEL_LOG_LEVEL")
WORKERS_FILE = "ray-workers.jsonl"


class RayWorkerLost(LLMError):
    """A step's Ray actor died and the stage's pipeline was not finished after ``retries`` restarts."""


class RayUnavailable(LLMError):
    """``--ray`` was given but this Python environment has no Ray, or the cluster cannot be reached."""


@dataclass(frozen=True)
class RaySettings:
    """Where and how to run on Ray: the cluster ``address``, replicas of each LLM-using step (None: one per LLM
    endpoint, decided by the runner), pipeline restarts after a lost worker."""

    address: str
    replicas: int | None = None
    retries: int = 2

    def describe(self) -> dict[str, Any]:
        return {"address": self.address, "replicas": self.replicas, "retries": self.retries}


_CURRENT: contextvars.ContextVar[RaySettings | None] = contextvars.ContextVar("cm2data_ray", default=None)


@contextlib.contextmanager
def on_ray(settings: RaySettings | None) -> Iterator[None]:
    """Within this block, :func:`~cm2data.pipelines.run.run_rows` runs its pipelines on Ray (None: locally)."""
    token = _CURRENT.set(settings)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> RaySettings | None:
    return _CURRENT.get()


def require_ray() -> None:
    """Fail with the way out when this environment has no Ray."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise RayUnavailable(
            "--ray needs Ray, which this Python environment does not have (it is not a toolkit dependency): run "
            "the command with the Ray environment's cm2data, `$(bash scripts/install_ray.sh)/bin/cm2data … --ray "
            "ADDRESS` (docs/scale.md)"
        ) from None


def _connect(address: str) -> None:
    import ray

    env = {k: os.environ[k] for k in ACTOR_ENV if k in os.environ}
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": env},
            log_to_driver=False,  # the actors' output stays in the cluster's logs; distilabel's log comes through
            logging_level="WARNING",
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None


def run_on_ray(
    build: Callable[[type], Any],
    settings: RaySettings,
    work: Path,
    say: Callable[[str], None] | None = None,
) -> Any:
    """Run the pipeline ``build(pipeline_class)`` makes on the cluster; its ``Distiset``. Restarted (a new pipeline
    from ``build``) after a lost worker, up to ``settings.retries`` times."""
    require_ray()
    import ray

    say = say or (lambda _: None)
    for attempt in range(settings.retries + 1):
        _connect(settings.address)
        try:
            pipeline = build(watched_pipeline_class())
            pipeline._cm2data_workers_file = work / WORKERS_FILE
            pipeline._cm2data_attempt = attempt
            return pipeline.run_watched()
        except RayWorkerLost as exc:
            if "did not stop" in str(exc):
                raise
            if attempt == settings.retries:
                raise RayWorkerLost(
                    f"{exc}; gave up after {settings.retries} restarts. Run the same command again to resume: "
                    "finished rows are taken from the journals"
                ) from None
            say(
                f"{exc}; restarting the pipeline ({attempt + 1}/{settings.retries}); "
                "finished rows come from the journals"
            )
        finally:
            ray.shutdown()  # ends this job's actors (they are owned by the driver), lost or not
    raise AssertionError("unreachable")  # pragma: no cover


_WATCHED: type | None = None


def watched_pipeline_class() -> type:
    """distilabel's ``RayPipeline`` with a watchdog on its step actors (built on first use: importing it needs
    Ray)."""
    global _WATCHED
    if _WATCHED is None:
        _WATCHED = _make_watched_pipeline()
    return _WATCHED


def _make_watched_pipeline() -> type:
    import ray
    from distilabel.pipeline import RayPipeline
    from distilabel.pipeline.base import set_pipeline_running_env_variables
    from distilabel.pipeline.step_wrapper import _StepWrapper
    from distilabel.utils.logging import setup_logging, stop_logging

    @ray.remote
    class StepActor:
        """One replica of one step (distilabel's ``_StepWrapperRay``, plus :meth:`where`)."""

        def __init__(self, step_wrapper: Any, log_queue: Any, pipeline_name: str, pipeline_cache_id: str):
            self._step_wrapper = step_wrapper
            self._log_queue = log_queue
            self._pipeline_name = pipeline_name
            self._pipeline_cache_id = pipeline_cache_id

        def where(self) -> dict[str, Any]:
            return {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "node_ip": ray.util.get_node_ip_address(),
            }

        def run(self) -> str:
            setup_logging(log_queue=self._log_queue)
            set_pipeline_running_env_variables(self._pipeline_name, self._pipeline_cache_id)
            return self._step_wrapper.run()

    class WatchedRayPipeline(RayPipeline):
        """``RayPipeline`` that keeps each step actor's ``run`` reference and notices when one fails."""

        _cm2data_workers_file: Path | None = None
        _cm2data_attempt = 0

        def _handle_keyboard_interrupt(self) -> Any:
            return None  # run in a thread (signals are the main thread's); Ctrl-C reaches the waiting driver

        def _run_step(self, step: Any, input_queue: Any, replica: int) -> None:
            # distilabel's RayPipeline._run_step, less the in-process vLLM placement groups (cm2data talks to
            # served models), plus the references the watchdog waits on
            options: dict[str, Any] = {"name": f"distilabel-{self.name}-{step.name}-{replica}"}
            for key, value in (
                ("num_cpus", step.resources.cpus),
                ("num_gpus", step.resources.gpus),
                ("memory", step.resources.memory),
                ("resources", step.resources.resources),
            ):
                if value is not None:
                    options[key] = value
            actor = StepActor.options(**options).remote(  # type: ignore[attr-defined]
                step_wrapper=_StepWrapper(
                    step=step,
                    replica=replica,
                    input_queue=input_queue,
                    output_queue=self._output_queue,
                    load_queue=self._load_queue,
                    dry_run=self._dry_run,
                    ray_pipeline=True,
                ),
                log_queue=self._log_queue,
                pipeline_name=self.name,
                pipeline_cache_id=self.signature,
            )
            where = actor.where.remote()  # runs before run() (an actor's calls run in order)
            with self._cm2data_lock:
                self._cm2data_actors.append(actor)  # a live handle keeps the actor alive
                self._cm2data_runs[actor.run.remote()] = (step.name, replica)
                self._cm2data_where[where] = (step.name, replica)

        def run_watched(self) -> Any:
            """``run(use_cache=False)`` in a thread while this one watches the step actors; the ``Distiset``, or
            :class:`RayWorkerLost` as soon as an actor fails."""
            self._cm2data_lock = threading.Lock()
            self._cm2data_actors: list[Any] = []
            self._cm2data_runs: dict[Any, tuple[str, int]] = {}
            self._cm2data_where: dict[Any, tuple[str, int]] = {}
            result: dict[str, Any] = {}

            def target() -> None:
                try:
                    result["distiset"] = self.run(use_cache=False)
                except BaseException as exc:
                    result["error"] = exc

            thread = threading.Thread(target=target, name="cm2data-ray-pipeline", daemon=True)
            thread.start()
            lost: str | None = None
            while thread.is_alive() and lost is None:
                thread.join(timeout=0.2)
                lost = self._check_actors()
            if lost is not None:
                self._unwind(thread)
                raise RayWorkerLost(lost)
            if "error" in result:
                raise result["error"]
            return result["distiset"]

        def _unwind(self, thread: threading.Thread) -> None:
            """End this run after a lost worker: its actors killed (the live replicas stop working), then its queue
            actors, so that distilabel's threads blocked on them get an error and end (waited for up to 60 s).
            Shutting Ray down under a thread still blocked in a Ray call crashes the process (SIGSEGV, seen here)."""
            with contextlib.suppress(Exception):
                stop_logging()  # its listener reads the log queue actor: stop it first
            previous = threading.excepthook

            def quiet(args: Any) -> None:  # distilabel's threads dying on the killed queues: expected, not news
                if not isinstance(args.exc_value, ray.exceptions.RayError):
                    previous(args)

            threading.excepthook = quiet
            try:
                for actor in self._cm2data_actors:
                    with contextlib.suppress(Exception):
                        ray.kill(actor, no_restart=True)
                queues = [self._output_queue, self._load_queue, *self._steps_input_queues.values()]
                for queue in queues:
                    with contextlib.suppress(Exception):
                        ray.kill(queue.actor, no_restart=True)
                thread.join(timeout=60)
            finally:
                threading.excepthook = previous
            if thread.is_alive():
                raise RayWorkerLost(
                    "a Ray worker was lost and the pipeline did not stop within 60 s; run the same command again "
                    "to resume (finished rows are taken from the journals)"
                )

        def _check_actors(self) -> str | None:
            """The first failed actor (None: all well), and the workers file brought up to date."""
            with self._cm2data_lock:
                runs = dict(self._cm2data_runs)
                where = dict(self._cm2data_where)
            if where:
                ready, _ = ray.wait(list(where), num_returns=len(where), timeout=0)
                for ref in ready:
                    step, replica = where[ref]
                    with self._cm2data_lock:
                        self._cm2data_where.pop(ref, None)
                    with contextlib.suppress(Exception):
                        self._record_worker(step, replica, ray.get(ref))
            if not runs:
                return None
            ready, _ = ray.wait(list(runs), num_returns=len(runs), timeout=0)
            for ref in ready:
                step, replica = runs[ref]
                with self._cm2data_lock:
                    self._cm2data_runs.pop(ref, None)
                try:
                    ray.get(ref)
                except Exception as exc:  # RayActorError (the process died), or the step itself failed
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    return (
                        f"the Ray worker of step {step!r} (replica {replica}) was lost: {type(exc).__name__}: {first}"
                    )
            return None

        def _record_worker(self, step: str, replica: int, where: dict[str, Any]) -> None:
            if self._cm2data_workers_file is None:
                return
            entry = {"pipeline": self.name, "attempt": self._cm2data_attempt, "step": step, "replica": replica}
            entry |= {**where, "time": time.time()}
            self._cm2data_workers_file.parent.mkdir(parents=True, exist_ok=True)
            with self._cm2data_workers_file.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    return WatchedRayPipeline
