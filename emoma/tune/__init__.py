"""The Ray Tune + Optuna boundary: the only package that imports Ray or Optuna at module level.

`search` runs many configurations on Ray Tune (one trial, one full cross-validation), `schedulers` decides
a trial's fate (Optuna told the truth, pruning over folds), `watch` follows a running search (progress line,
live trials.csv and report.md, MLflow child runs). Everything they compute with is Ray-free and lives outside.
"""

import sys

from emoma.tune import schedulers, search, watch

# Tune's saved state of an experiment (tuner.pkl, the searcher's and callbacks' state) names the classes by
# the module they lived in when it began (emoma.search, then emoma.tuning, emoma.schedulers and emoma.watch
# before this package). The old names still load, so those experiments stay resumable.
for _old, _new in {
    "emoma.search": search,
    "emoma.tuning": search,
    "emoma.schedulers": schedulers,
    "emoma.watch": watch,
}.items():
    sys.modules.setdefault(_old, _new)
