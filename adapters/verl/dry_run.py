"""Compose a recipe's Hydra overrides against VeRL's own ``ppo_trainer`` config and run its ``validate_config``,
on CPU, without launching anything (``DRY_RUN=1 recipes/rl_qwen.sh``).

    python -m adapters.verl.dry_run key=value …      # exit 0 and the resolved essentials; 1 with the error

A misspelled key fails in the compose (Hydra: "Could not override … Key '…' is not in struct").

With ``algorithm.adv_estimator=cm2_turn|cm2_step`` it also loads the dataset class the way the trainer does
(``data.custom_cls.path``), checks that this registered the estimator with VeRL, and checks what the credit record
needs (adapters/verl/credit.py): the ``cm2_agent`` loop, the V1 trainer, no KL penalty in the reward, more than 4
samples per prompt for the turn level, a valid ``CM2DATA_CREDIT_ETA``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys


def compose(overrides: list[str]):
    import verl
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=overrides)


def validate(config) -> None:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))


CREDIT_ESTIMATORS = {"cm2_turn": "turn", "cm2_step": "step"}  # adapters.verl.credit.ESTIMATORS


def check_credit(config) -> dict | None:
    """For a cm2 estimator: the checks above; returns what the summary shows (None for VeRL's own estimators)."""
    name = str(config.algorithm.adv_estimator)
    level = CREDIT_ESTIMATORS.get(name)
    if level is None:
        return None
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
    from verl.utils.dataset.rl_dataset import get_dataset_class

    with contextlib.redirect_stdout(sys.stderr):
        dataset_cls = get_dataset_class(config.data)  # imports data.custom_cls.path as the trainer does
    fn = get_adv_estimator_fn(name)  # raises when the dataset module did not register it
    a = config.actor_rollout_ref
    problems = []
    if a.rollout.agent.default_agent_loop != "cm2_agent":
        problems.append("actor_rollout_ref.rollout.agent.default_agent_loop must be cm2_agent")
    if not config.trainer.get("use_v1", True):
        problems.append("trainer.use_v1 must be True (the legacy trainer builds rm_scores without the record)")
    if config.algorithm.use_kl_in_reward:
        problems.append("algorithm.use_kl_in_reward must be False (a KL penalty rewrites the reward tensor)")
    if level == "turn" and a.rollout.n <= 4:
        problems.append(
            f"rollout.n={a.rollout.n}: turn-level advantages are 0 wherever 4 or fewer samples reach a "
            "turn, so every advantage would be 0"
        )
    eta = os.environ.get("CM2DATA_CREDIT_ETA", "").strip()
    try:
        eta_value = float(eta) if eta else None
    except ValueError:
        eta_value = -1.0
    if eta_value is not None and not 0 < eta_value <= 1:
        problems.append(f"CM2DATA_CREDIT_ETA={eta!r} is not a number in (0, 1]")
    if problems:
        raise ValueError("; ".join(problems))
    return {
        "level": level,
        "estimator": f"{fn.__module__}.{fn.__name__}",
        "registered_by": dataset_cls.__name__,
        "eta": eta_value,
        "normalize": os.environ.get("CM2DATA_CREDIT_NORMALIZE", "0") in ("1", "true", "yes"),
    }


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        config = compose(overrides)
        validate(config)
        credit = check_credit(config)
    except Exception as exc:
        print(f"DRY_RUN: the configuration is invalid: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    a = config.actor_rollout_ref
    summary = {
        "model": a.model.path,
        "adv_estimator": config.algorithm.adv_estimator,
        "norm_adv_by_std_in_grpo": config.algorithm.norm_adv_by_std_in_grpo,
        "rollout": {
            "name": a.rollout.name,
            "n": a.rollout.n,
            "multi_turn": a.rollout.multi_turn.enable,
            "agent_loop_config_path": a.rollout.agent.agent_loop_config_path,
        },
        "train_batch_size": config.data.train_batch_size,
        "ppo_mini_batch_size": a.actor.ppo_mini_batch_size,
        "lr": a.actor.optim.lr,
        "kl_loss": [a.actor.use_kl_loss, a.actor.kl_loss_coef, a.actor.kl_loss_type],
        "reward_function": dict(config.reward.custom_reward_function),
        "gpus": [config.trainer.nnodes, config.trainer.n_gpus_per_node],
        "credit": credit or {"level": "trajectory"},
    }
    print("DRY_RUN: configuration composed and validated against verl's ppo_trainer")
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
