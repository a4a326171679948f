"""Transferability estimators: score a checkpoint on a target dataset without training.

One plain function per estimator on torch tensors (CPU or CUDA; float64 inside), each with its
definition and source in its docstring, higher = better for all of them:

=====================  =============================================  ========================
name                   function                                       reads
=====================  =============================================  ========================
``logme``              :func:`~suite.estimators.logme.logme`          features
``leep``               :func:`~suite.estimators.source.leep`          source-head probs
``nce``                :func:`~suite.estimators.source.nce`           source-head hard labels
``hscore``             :func:`~suite.estimators.hscore.hscore`        features
``hscore_shrinkage``   :func:`~suite.estimators.hscore.hscore_shrinkage`  features
``nleep``              :func:`~suite.estimators.nleep.nleep`          features
``gbc``                :func:`~suite.estimators.gbc.gbc`              features
``sfda``               :func:`~suite.estimators.sfda.sfda`            features
``transrate``          :func:`~suite.estimators.transrate.transrate`  features
=====================  =============================================  ========================

:data:`ESTIMATORS` maps names to entries (function, whether it needs the source head);
:func:`compute_all` scores one split with many of them and times each. The probe stage
(:func:`suite.probe.run_probe`) logs them as ``estimator.<name>`` metrics on the target
training split, the literature's convention.
"""

from suite.estimators.gbc import gbc
from suite.estimators.hscore import hscore, hscore_shrinkage
from suite.estimators.logme import logme
from suite.estimators.nleep import nleep
from suite.estimators.registry import ESTIMATORS, Estimator, check_names, compute_all
from suite.estimators.sfda import sfda
from suite.estimators.source import leep, nce
from suite.estimators.transrate import transrate

__all__ = ["ESTIMATORS", "Estimator", "check_names", "compute_all", "gbc", "hscore",
           "hscore_shrinkage", "leep", "logme", "nce", "nleep", "sfda", "transrate"]
