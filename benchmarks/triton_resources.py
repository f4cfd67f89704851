"""Static GPU resources of every Triton kernel, for the launches a real workload makes (CPU only).

Without a GPU this shows what each Triton kernel compiles to on one. The script runs the loss
(forward and backward, float32 and bfloat16, contiguous and channels_last) and an elastic pair at
the benchmark's image shapes on CPU tensors. The Triton interpreter is on, but each kernel launch
is recorded instead of run: the values on the host are garbage, the shapes, strides and options
are those of a real call. Each distinct launch is then compiled for a CUDA target (default sm_90)
with the specialisation Triton applies on a GPU:

* integer arguments equal to 1 become constants;
* integers divisible by 16 and 16-byte aligned tensors are marked so.

From the cubin it reports:

* registers per thread and spill stack bytes;
* static shared memory;
* programs per SM as registers and shared memory allow;
* the widths of the global loads and stores (``LDG.E.128`` is 16 bytes per thread).

The numbers come from the compiler on this machine. The Triton here may differ from the one on
the GPU machine, and nothing is timed. Use it to spot spills, low occupancy and unvectorised
memory access before a GPU run, not to predict times.

Run: ``python benchmarks/triton_resources.py [--arch 90] [--batch 2]``.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile

RECORD = "--record" in sys.argv  # the child process that runs the workload and lists the launches
# before any @triton.jit kernel is created: interpreted kernels to record, JIT kernels to compile
os.environ["TRITON_INTERPRET"] = "1" if RECORD else "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default; silences its warning

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import lrc_fast  # noqa: E402

# per-SM limits of an H100/H200 (sm_90)
REGISTERS_PER_SM = 65536
SHARED_PER_SM = 228 * 1024
MAX_WARPS_PER_SM = 64
MAX_PROGRAMS_PER_SM = 32
_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
          torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
          torch.uint8: "u8", torch.bool: "i1"}


class Launch(collections.namedtuple("Launch", "fn signature constexprs aligned num_warps num_stages")):
    """One kernel launch reduced to what the compiler sees; ``fn`` is the JITFunction."""

    @classmethod
    def from_record(cls, record: dict) -> "Launch":
        fn = getattr(importlib.import_module(record["module"]), record["name"])
        constexprs = {(index,): value for index, value in record["constexprs"]}
        return cls(fn, record["signature"], constexprs, tuple(record["aligned"]), record["num_warps"],
                   record["num_stages"])

    @property
    def key(self) -> str:
        return json.dumps([self.fn.__name__, self.signature, sorted(map(str, self.constexprs.items())),
                           self.aligned, self.num_warps, self.num_stages])

    @property
    def label(self) -> str:
        shown = {self.fn.arg_names[index]: value for (index,), value in self.constexprs.items()}
        options = ", ".join(f"{k}={v}" for k, v in shown.items())  # unit strides show as s_..=1
        return f"{self.fn.__name__}({options}) w={self.num_warps}"


def _describe(fn, args, kwargs) -> dict:
    """The signature, constants and alignment Triton would specialise this call to on a GPU."""
    names = list(inspect.signature(fn).parameters)
    params = dict(zip(names, args))
    params.update({k: v for k, v in kwargs.items() if k in names})
    constexpr_names = {name for name, p in inspect.signature(fn).parameters.items()
                       if "constexpr" in str(p.annotation)}
    signature, constexprs, aligned = {}, {}, []
    for index, name in enumerate(names):
        value = params[name]
        if name in constexpr_names or value is None:
            signature[name] = "constexpr"
            constexprs[(index,)] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
            if value.data_ptr() % 16 == 0:
                aligned.append(index)
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1:  # Triton turns an integer argument equal to 1 into a constant
                signature[name] = "constexpr"
                constexprs[(index,)] = 1
                continue
            signature[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
            if value % 16 == 0:
                aligned.append(index)
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot describe argument {name}={value!r}")
    return dict(module=fn.__module__, name=fn.__name__, signature=signature,
                constexprs=[[index, value] for (index,), value in constexprs.items()], aligned=aligned,
                num_warps=kwargs.get("num_warps", 4), num_stages=kwargs.get("num_stages", 3))


def record_launches(workload) -> list[dict]:
    """Run ``workload()`` with every Triton launch recorded instead of executed (interpreter on)."""
    from triton.runtime.interpreter import InterpretedFunction

    launches = []
    original = InterpretedFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(_describe(self.fn, args, kwargs))

    InterpretedFunction.run = record
    try:
        workload()
    finally:
        InterpretedFunction.run = original
    return launches


def loss_workload(batch, channels, size, num_regions, num_samples):
    """Loss forward + backward in float32/bfloat16, contiguous/channels_last, two region maps."""
    side = int(round(num_regions ** 0.5))
    cells = torch.arange(size) * side // size
    regions_q = (cells[:, None] * side + cells[None, :]).expand(batch, -1, -1).contiguous()
    regions_p = regions_q.roll(shifts=(3, -2), dims=(1, 2))
    for dtype in (torch.float32, torch.bfloat16):
        for layout in (torch.contiguous_format, torch.channels_last):
            feats = [torch.zeros(batch, channels, size, size, dtype=dtype)
                     .to(memory_format=layout).requires_grad_(True) for _ in range(2)]
            loss = lrc_fast.region_contrast_loss(*feats, regions_q, regions_p, num_regions=num_regions,
                                                 num_samples=num_samples, generator=0, backend="triton")
            loss.backward()


def elastic_workload(batch, size):
    """One elastic pair (field and warp) at the default alpha and sigma."""
    images = torch.zeros(batch, 1, size, size)
    regions = torch.zeros(batch, size, size, dtype=torch.int64)
    lrc_fast.elastic_pair(images, regions, generator=torch.Generator().manual_seed(0), backend="triton")


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_launch(launch: Launch, arch: int):
    attrs = {(index,): [["tt.divisibility", 16]] for index in launch.aligned}
    source = ASTSource(launch.fn, launch.signature, launch.constexprs, attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=launch.num_warps, num_stages=launch.num_stages))


def cubin_report(kernel, num_warps: int) -> dict:
    """Registers, spill stack, shared memory, programs per SM and global access widths."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin.name],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin.name],
                              capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    shared = max(int(re.search(r"SHARED:(\d+)", usage).group(1)), kernel.metadata.shared)
    allocated = -(-registers // 8) * 8  # registers are allocated per warp in units of 256
    programs = min(MAX_PROGRAMS_PER_SM, REGISTERS_PER_SM // (allocated * 32 * num_warps),
                   MAX_WARPS_PER_SM // num_warps, SHARED_PER_SM // shared if shared else MAX_PROGRAMS_PER_SM)
    widths = collections.Counter(re.findall(r"\b((?:LDGSTS|LDG(?![A-Z])|STG|RED|ATOMG)(?:\.[A-Z0-9_]+)*)", sass))
    return dict(registers=registers, stack=stack, shared=shared, programs=programs,
                warps=programs * num_warps, access=dict(sorted(widths.items())))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (default 90)")
    parser.add_argument("--batch", type=int, default=2, help="images per launch (default 2; strides "
                        "and alignment do not depend on it)")
    parser.add_argument("--record", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.record:  # the child: run the workloads under the interpreter, print the launches
        from lrc_fast.kernels import region_infonce, region_pool
        # the choices the launchers make for CUDA tensors, not for the CPU tensors used here
        region_infonce._launch_precision = lambda tensor, precision: precision
        region_pool._sort_network = lambda regions: False
        launches = record_launches(lambda: loss_workload(args.batch, 64, 512, 256, 50))
        launches += record_launches(lambda: elastic_workload(args.batch, 512))
        print(json.dumps(launches))
        return 0
    child = subprocess.run([sys.executable, __file__, "--record", "--batch", str(args.batch)],
                           capture_output=True, text=True, check=True)
    launches = [Launch.from_record(record) for record in json.loads(child.stdout.splitlines()[-1])]
    seen = {}
    for launch in launches:
        seen.setdefault(launch.key, launch)
    print(f"Triton {triton.__version__}, sm_{args.arch}, {len(launches)} launches, {len(seen)} distinct "
          f"(loss B={args.batch} D=64 512x512 K=256 N=50 in float32/bfloat16, contiguous/channels_last; "
          "elastic pair 512x512)\n")
    print("| kernel (constants) | dtypes | registers | spill bytes | shared bytes | programs / SM "
          "| warps / SM | global access |")
    print("|---|---|---|---|---|---|---|---|")
    for launch in seen.values():
        report = cubin_report(compile_launch(launch, args.arch), launch.num_warps)
        dtypes = ",".join(sorted({t[1:] for t in launch.signature.values() if t.startswith("*")}))
        access = " ".join(f"{k}×{v}" for k, v in report["access"].items())
        print(f"| `{launch.label}` | {dtypes} | {report['registers']} | {report['stack']} | "
              f"{report['shared']} | {report['programs']} | {report['warps']} | {access} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
