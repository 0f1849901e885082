"""Judge fidelity: measure the checklist judge against people and against a careful judge (docs/judge-fidelity.md).

* :mod:`cm2data.fidelity.run` — ``cm2data judge run``: the judge's verdicts for every checklist item of a dataset's
  reference dialogues (or a seeded sample), through :mod:`cm2data.judge`, into a verdict folder
  (:mod:`cm2data.verdicts`);
* :mod:`cm2data.fidelity.agree` — ``cm2data judge agree``: κ, accuracy, confusion matrices and bootstrap intervals
  (:mod:`cm2data.stats.agreement`) of a judge against people and against another judge, per focus and per mode,
  with every bad input counted;
* :mod:`cm2data.fidelity.report` — ``agreement.html`` (tables and plots) and the dataset card's section.

The Argilla side (``cm2data review push-verdicts`` / ``pull-verdicts``) is :mod:`cm2data.review.verdicts`.
"""
