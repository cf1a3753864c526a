"""``python -m soul.run`` for the DeepSpeed test, without DeepSpeed's optional shared-memory
all-reduce kernel, which its CPU accelerator would compile with gcc on first use (about two
minutes on 2 cores); collectives then go through gloo, which the test needs anyway."""

import runpy

import deepspeed.ops

deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
runpy.run_module("soul.run", run_name="__main__", alter_sys=True)
