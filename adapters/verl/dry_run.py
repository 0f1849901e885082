"""Compose a recipe's Hydra overrides against VeRL's own ``ppo_trainer`` config and run its ``validate_config``,
on CPU, without launching anything (``DRY_RUN=1 recipes/rl_qwen.sh``).

    python -m adapters.verl.dry_run key=value …      # exit 0 and the resolved essentials; 1 with the error

A misspelled key fails in the compose (Hydra: "Could not override … Key '…' is not in struct").
"""

from __future__ import annotations

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


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        config = compose(overrides)
        validate(config)
    except Exception as exc:
        print(f"DRY_RUN: the configuration is invalid: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    a = config.actor_rollout_ref
    summary = {
        "model": a.model.path, "adv_estimator": config.algorithm.adv_estimator,
        "norm_adv_by_std_in_grpo": config.algorithm.norm_adv_by_std_in_grpo,
        "rollout": {"name": a.rollout.name, "n": a.rollout.n, "multi_turn": a.rollout.multi_turn.enable,
                    "agent_loop_config_path": a.rollout.agent.agent_loop_config_path},
        "train_batch_size": config.data.train_batch_size, "ppo_mini_batch_size": a.actor.ppo_mini_batch_size,
        "lr": a.actor.optim.lr, "kl_loss": [a.actor.use_kl_loss, a.actor.kl_loss_coef, a.actor.kl_loss_type],
        "reward_function": dict(config.reward.custom_reward_function),
        "gpus": [config.trainer.nnodes, config.trainer.n_gpus_per_node],
    }
    print("DRY_RUN: configuration composed and validated against verl's ppo_trainer")
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
