"""``python -m soul.run`` for the FSDP test. accelerate grants FSDP only to GPU-type process
groups; on this CPU machine a launch with ``distributed_type: FSDP`` becomes plain multi-CPU
data parallelism. This entry lets accelerate's multi-CPU (gloo) state take its FSDP plugin, so
that accelerate's own FSDP2 code (``fully_shard`` per decoder layer, the optimizer's parameters
swapped for the sharded ones, sharded checkpoints) runs here as it would on GPUs."""

import runpy

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # Every later AcceleratorState() copies PartialState's shared state over its own: set both.
        PartialState._shared_state["distributed_type"] = self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = _init_with_fsdp_on_cpu
runpy.run_module("soul.run", run_name="__main__", alter_sys=True)
