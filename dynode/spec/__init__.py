r"""Networks as data: a declarative, versioned model spec that a :class:`dynode.Network` round-trips.

A spec lists what :class:`~dynode.Network`'s builder calls make, in order::

    spec_version: 1
    inputs: {image: [1, 16, 16]}
    populations:                       # declaration order = evaluation order
      - {name: V1, shape: [8, 8, 8], tau: 5.0, phi: {kind: relu}, bias: false}
    connections:                       # connect() order (the summation order of u)
      - {src: image, dst: V1, delay: 0.0,
         op: {kind: conv2d, in_channels: 1, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}}
      - {src: V1, dst: V1, delay: 6.0, op: {kind: recurrence, type: full, channels: 8}}
    readout: {kind: readout, population: V1, shape: [8, 8, 8], num_classes: 10}
    protocol: {dt: 2.0, t_end: 40.0, solver: {kind: euler}}

so that ``tau_p dr_p/dt = -r_p + Phi_p(combine_p({op_c(r_src(c)(t - d_c))}) + b_p)`` is
fully described by data. An operator (``op``, ``phi``, ``combine``, the readout) is a mapping
with a ``kind`` and that kind's constructor arguments: a kind of the vocabulary
(:data:`OPERATOR_KINDS`: ``conv2d``, ``linear``, ``recurrence`` (any type of
:mod:`dynode.models.recurrence`), ``adapter`` (the automatic skip/feedback adapter from two
shapes), ``identity``, the activations, the normalization/adaptation/E-I modules, ...), or an
import path ``"pkg.mod:Name"`` whose remaining keys are its keyword arguments (the class
describes itself with a ``spec_kwargs()`` method returning them). ``op: null`` in a
connection is ``connect(op=None)``: the identity or the automatic adapter.

The spec is the architecture (and the initial values of hyper-parameters such as a pool's
weight); the trained values are the ``state_dict``. :func:`network_spec` reads a network
through its public attributes and checks that the spec rebuilds the same parameter layout;
:func:`build_network` replays the builder calls; checkpoints (:mod:`dynode.train`) and
archives store the spec, and :func:`load_model` rebuilds the trained network from a
checkpoint alone. Bad input (an unknown kind, an import path that does not import, a spec
written by a newer dynode, a typo in a key) is a :class:`~dynode.errors.ConfigurationError`
before anything is built.

A vector field of the user's own (not a :class:`~dynode.Network`) is recorded as an operator of
its own class is: ``{"kind": "mymodels:WilsonCowan", **spec_kwargs()}``
(:func:`~dynode.spec.field.field_spec`); its class must be importable by that path (not
defined in ``__main__``), and rebuilding it (:func:`~dynode.spec.field.build_field`,
:func:`dynode.load_model`) imports the user's module, so it needs ``trust_code=True``.

A spec is data, whoever wrote it: building one imports and calls only the vocabulary, the
``nn.Module`` classes of ``torch.nn`` and dynode (checked to be such classes before they are
called) and, for ``{"kind": "function"}``, the tensor functions of ``torch``,
``torch.nn.functional``, ``torch.special`` and :mod:`dynode.activations`. Any other import
path is refused before its module is imported, unless the user trusts the file:
``build_network(spec, trust_code=True)``, ``load_spec(path, trust_code=True)``,
:func:`dynode.load_model` ``(..., trust_code=True)``. The current folder is never added to the
import path.
"""

from dynode.spec.model import (SPEC_VERSION, ConnectionSpec, ModelSpec, PopulationSpec, ProtocolSpec, build_network,
                               check_imports, load_spec, network_spec, save_spec, spec_record, weights_fingerprint)
from dynode.spec.field import build_field, field_spec, is_field_spec
from dynode.spec.operators import OPERATOR_KINDS, build_op, op_spec
from dynode.spec.trust import import_object, trusting

__all__ = ["SPEC_VERSION", "ModelSpec", "PopulationSpec", "ConnectionSpec", "OPERATOR_KINDS",
           "network_spec", "build_network", "op_spec", "build_op", "load_spec", "save_spec",
           "import_object", "weights_fingerprint", "trusting", "check_imports", "ProtocolSpec", "spec_record",
           "field_spec", "build_field", "is_field_spec"]
