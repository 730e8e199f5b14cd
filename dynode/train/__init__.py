r"""Training by back-propagation through time (``dynode.train``).

One training step for a global batch of images ``x`` with labels ``y``:

1. optional idle warm-up: ``idle`` ms without input and without gradient; the run then
   continues from that state *with its delayed past* (``integrate(initial_state=solution)``);
2. the image is shown from ``stimulus_onset`` for ``stimulus_duration`` ms (default: to the
   end) and the network is integrated on the grid ``t_k = k dt``, ``k = 0..N``,
   ``N = t_end / dt``, with gradients;
3. loss ``L = CE + energy_weight * E + stability_weight * S`` with

   * ``CE``: for a readout ``at="every"`` the weighted cross-entropy
     ``sum_k w_k CE(logits(t_k), y)`` over the reaction window ``t_k >= onset + reaction_time``
     and ``t_k > onset`` (the state at the onset itself is still the pre-stimulus one; inside the
     readout's own window, if it has one), ``w_k`` uniform or a ramp, summing to 1
     (:func:`dynode.models.losses.time_weights`); for ``at="last"``/``"mean"``: the
     cross-entropy of the one logit vector;
   * ``E = mean_{k, b, units} |r|^p`` over all populations, all ``N + 1`` saved times
     (:func:`~dynode.models.losses.energy_loss`);
   * ``S``: squared deviation after the stimulus offset from the pre-stimulus mean
     (:func:`~dynode.models.losses.stability_loss`);
4. backward, gradient clipping, optimizer step; the LR schedule steps once per epoch.

Only the states the loss needs are saved (``save_at``): the final state for ``at="last"``,
the weighted window for ``"every"``, every step when ``E`` or ``S`` is on; without ``E`` and
``S`` only the readout's population of the saved states is kept.

Long runs:

* ``checkpoint`` -- gradient checkpointing over time segments (``True``: ~sqrt(N) steps);
  the gradients equal those of plain BPTT; memory grows with the number of segments plus
  one segment's graph (each segment boundary also keeps the delayed past, ``max_delay / dt``
  states per population). On the CPU with glibc, freed buffers of the recomputed segments stay
  in the heap unless ``MALLOC_MMAP_THRESHOLD_`` is fixed (e.g. ``131072``); the process's
  resident set then follows the live tensors.
* ``tbptt`` -- truncated BPTT: segments of that many steps; the state *and its delayed past*
  are detached between segments, each segment back-propagates its part of the loss
  (``sum_k w_k CE_k`` over its times, ``E`` weighted by its share of the times), the
  gradients accumulate and the optimizer steps once per batch. The loss *value* equals the
  full-run loss; only the gradient is truncated. (``S`` needs the whole run: not with tbptt.)

Distributed (DDP): launch the training script with ``torchrun --nproc_per_node P script.py``.
When ``WORLD_SIZE > 1`` and no process group exists yet, :class:`Trainer` initialises one
itself (``env://``; backend ``nccl`` for CUDA devices, with ``cuda:LOCAL_RANK``, else ``gloo``)
and :meth:`Trainer.close` (called by :func:`train`) destroys it again; a script that creates
its own process group keeps it. The network runner is wrapped in
``DistributedDataParallel``. Every rank gets the same global batches (the same seeded
order) and takes the samples ``rank, rank + P, ...`` of each; its loss is scaled by
``P * n_local / n_global`` so that DDP's gradient average is the gradient of the global-batch
mean: the loss curve matches single-process training on the same global batch (up to
floating-point summation order). Metrics are reduced over ranks; rank 0 writes the log
and the checkpoints. TBPTT segments before the last run under ``no_sync`` (one gradient
all-reduce per batch). The wrapped forward returns a :class:`dynode.Solution` (DDP does not
look into it: ``find_unused_parameters`` is off, so every parameter must get a gradient in
every step, as in the zoo's models).

Everything that makes a run is in :class:`TrainingConfig`; checkpoints hold the weights, the
optimizer, scheduler and gradient-scaler state, the epoch, the metrics, the RNG state and
the config, and load with ``torch.load(..., weights_only=True)``. Resuming continues the same
run: the data order and the random streams are seeded per epoch, so 2 epochs straight and
1 epoch + checkpoint + resume + 1 epoch give the same weights and metrics. A trainer given the
whole resolved config of its run (``run_config=``, as ``dynode sweep`` does for each point)
stores it in its checkpoints, and resuming refuses a checkpoint made for any other run config
(naming the keys that differ), not just for another training config.

The package, one concept per module (each imports only those before it): :mod:`.config`
(:class:`TrainingConfig`), :mod:`.state` (:class:`TrainResult`, checkpoints, run
fingerprints), :mod:`.runtime` (device, process group, the DDP-wrapped runner), :mod:`.data`
(batches, data checks), :mod:`.objective` (what a step integrates and minimises),
:mod:`.logger` (TensorBoard, the optional tracker: ``logger="tensorboard"``),
:mod:`.trainer` (:class:`Trainer`, :func:`train`, :func:`evaluate`).
"""

from dynode.checkpoint import load_checkpoint, load_weights
from dynode.train.config import TrainingConfig
from dynode.train.state import TrainResult, canonical_json, config_diff, run_fingerprint
from dynode.train.trainer import Trainer, evaluate, train

__all__ = ["TrainingConfig", "Trainer", "TrainResult", "train", "evaluate", "load_checkpoint", "load_weights",
           "canonical_json", "run_fingerprint", "config_diff"]
