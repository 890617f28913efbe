"""Everything that imports TensorFlow, and nothing else.

The layout is the rule: modules in ``nas.tf`` import TensorFlow, ``tf_keras`` or tfmot at module level;
modules outside it (spec, space, hardware, the analytic profile and arena planner, results, the search
coordinator, the command line) never import ``nas.tf`` at module level, so a search's coordinator, ``nas
pareto`` and the explorer start in a fraction of a second and never pay for TensorFlow
(``tests/test_layout.py`` checks it in a fresh interpreter).

* :mod:`nas.tf.builder`: Keras (``tf_keras``) layers for :mod:`nas.topology`, and INT8 QAT annotation;
* :mod:`nas.tf.pipeline`: arrays to batched, augmented ``tf.data`` pipelines at a candidate's resolution;
* :mod:`nas.tf.train`: the QAT training recipe under a :class:`nas.budget.Budget`;
* :mod:`nas.tf.convert`: full-integer TFLite conversion and INT8 evaluation with the reference kernels;
* :mod:`nas.tf.candidate`: one candidate end to end, the only bridge from the search to TensorFlow.

Importing :mod:`nas` first sets ``TF_USE_LEGACY_KERAS=1``, which must happen before TensorFlow loads.
"""
import nas  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
