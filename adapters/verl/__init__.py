"""cm2data's VeRL 0.9.1 adapter: plugs CM2 checklist rewards into VeRL through its public extension points only.

* ``adapters.verl.dataset.CM2RLDataset`` — ``data.custom_cls``: decodes the JSON-string columns of
  ``cm2data export verl`` and renders each prompt with the row's own tools;
* ``adapters.verl.tool.CM2SimulatedTool`` — a native ``BaseTool`` backed by the simulated tool environment
  (replay → schema check → LLM mock, cached), one instance per tool schema of a row;
* ``adapters.verl.agent_loop.CM2AgentLoop`` (registered as ``cm2_agent``; ``agent_loop.yaml``) — replays the reference
  user turns, runs tools, judges each finished turn, ends on a failed must-pass item or a tool error;
* ``adapters.verl.reward.compute_score`` — async; the checklist reward with per-turn scores and judge failures;
* ``adapters.verl.credit`` — the ``cm2_turn``/``cm2_step`` advantage estimators (``algorithm.adv_estimator``;
  registered when ``dataset.py`` is loaded) and the credit record the agent loop writes into the reward tensor.

Runs inside VeRL's own environment (``recipes/install_verl.sh``) with the checkout on ``PYTHONPATH``; it imports only
VeRL's stack and ``cm2data.schema``/``reward``/``judge``/``llm`` (this package itself imports nothing heavy).
"""
