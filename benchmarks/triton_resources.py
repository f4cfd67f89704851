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

Run: ``python benchmarks/triton_resources.py [--arch 90] [--batch 2]``. With ``--check`` it instead
compiles every launch variant of the package and of the benchmark sweeps (``coverage_workload``)
and exits 1 if one does not compile or needs more shared memory than one program may have on
the target: a kernel that only a GPU would reject fails here, on the CPU
(tests/test_triton_compile.py runs it).
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
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
# the most shared memory one program (CTA) may use, by compute capability x 10 (CUDA C++
# Programming Guide, "Technical Specifications per Compute Capability"; 1 KB of each SM's is
# reserved): what Triton checks at launch
SHARED_PER_PROGRAM = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
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
    """Loss forward + backward on bench_loss.py's inputs (two region maps), in float32/bfloat16,
    contiguous and channels_last."""
    from bench_loss import make_inputs

    for dtype in (torch.float32, torch.bfloat16):
        feat_q, feat_p, regions_q, regions_p = make_inputs(batch, channels, size, num_regions, dtype, "cpu")
        for layout in (torch.contiguous_format, torch.channels_last):
            feats = [f.to(memory_format=layout).requires_grad_(True) for f in (feat_q, feat_p)]
            loss = lrc_fast.region_contrast_loss(*feats, regions_q, regions_p, num_regions=num_regions,
                                                 num_samples=num_samples, generator=0, backend="triton")
            loss.backward()


def elastic_workload(batch, size):
    """One elastic pair (field and warp) at the default alpha and sigma, dense and coarse
    (spacing 8)."""
    images = torch.zeros(batch, 1, size, size)
    regions = torch.zeros(batch, size, size, dtype=torch.int64)
    for spacing in (None, 8):
        lrc_fast.elastic_pair(images, regions, generator=torch.Generator().manual_seed(0),
                              backend="triton", spacing=spacing)


def coverage_workload():
    """Every launch variant the package and the benchmark sweeps make, at odd and aligned shapes.

    For ``--check``: float32/bfloat16/float16 features, contiguous and channels_last, two maps
    of different integer dtypes, one strided shared map, ``max_regions`` (both subsets),
    ``include_self``/``normalize``, one image with one region and one channel and a gradient for
    the warped view only, images that fit one tile of the region index, images of one pixel and
    of one column (the loss and the elastic pair), cropped features (any strides),
    ``region_sample_mean``, every swept launch shape of the index, the pooling's search widths,
    the dense backward, the scatter backward in both layouts, the InfoNCE and the field, the
    warp with gradients and without (an elastic pair, dense and coarse) under each padding, the
    coarse field's upsampling, and the pooling's int64 gather.
    """
    from lrc_fast.kernels import elastic_warp, region_infonce, region_pool

    for height, width in ((37, 91), (64, 64)):  # odd: nothing divisible by 16; aligned: vectorised
        odd = height == 37
        batch, channels, k = 2, 12, 9
        regions = (torch.arange(height * width).reshape(1, height, width) % k).expand(batch, -1, -1)
        regions = regions.contiguous()
        int32_map = regions.flip(-1).to(torch.int32)
        strided = regions.transpose(1, 2).contiguous().transpose(1, 2)
        cases = [((regions, int32_map), {}), ((strided, None), dict(max_regions=4))]
        if odd:
            cases += [((regions, None), dict(max_regions=4, subset="random")),
                      ((regions, None), dict(include_self=True, normalize=False))]
        for dtype in (torch.float32, torch.bfloat16) + ((torch.float16,) if odd else ()):
            for layout in (torch.contiguous_format, torch.channels_last):
                feats = [torch.zeros(batch, channels, height, width, dtype=dtype)
                         .to(memory_format=layout).requires_grad_(True) for _ in range(2)]
                for (map_q, map_p), options in cases:
                    lrc_fast.region_contrast_loss(*feats, map_q, map_p, num_regions=k, generator=0,
                                                  backend="triton", **options).backward()
                lrc_fast.region_sample_mean(feats[0], regions, 5, num_regions=k, generator=0,
                                            backend="triton")
        if not odd:  # the int64 gather, for features whose offsets within an image reach 2**31
            wide, region_pool._wide_offsets = region_pool._wide_offsets, lambda *feats: True
            try:
                lrc_fast.region_sample_mean(torch.zeros(batch, channels, height, width), regions, 5,
                                            num_regions=k, generator=0, backend="triton")
            finally:
                region_pool._wide_offsets = wide
        if odd:  # integers equal to 1 become constants: one image, one region, one view's gradient
            one = [torch.zeros(1, 1, height, width), torch.zeros(1, 1, height, width, requires_grad=True)]
            lrc_fast.region_contrast_loss(*one, regions[:1], int32_map[:1], num_regions=1, num_samples=1,
                                          generator=0, backend="triton").backward()
            # the warped view's gradient alone, channels_last (the scatter backward's first view 1)
            feats = [torch.zeros(batch, channels, height, width).to(memory_format=torch.channels_last)
                     .requires_grad_(grad) for grad in (False, True)]
            lrc_fast.region_contrast_loss(*feats, regions, num_regions=k, generator=0,
                                          backend="triton").backward()
            # (h, w, layout, extra columns): a crop of wider features, whose pixels are not
            # (h * W + w) * s_w apart; an image in one tile of the index (n_tiles == 1, the default
            # for up to 1,024 pixels); one pixel and one column (H * W, W or H equal to 1)
            contiguous, channels_last = torch.contiguous_format, torch.channels_last
            for h, w, layout, extra in ((height, width, contiguous, 3), (20, 30, contiguous, 0),
                                        (1, 1, contiguous, 0), (1, 1, channels_last, 0),
                                        (37, 1, contiguous, 0), (37, 1, channels_last, 0)):
                feats = [torch.zeros(batch, channels, h, w + extra).to(memory_format=layout)
                         [..., extra // 2:extra // 2 + w].requires_grad_(True) for _ in range(2)]
                lrc_fast.region_contrast_loss(*feats, regions[:, :h, :w], num_regions=k, generator=0,
                                              backend="triton").backward()
            for h, w in ((1, 1), (37, 1)):
                thin_images = torch.zeros(batch, 1, h, w, requires_grad=True)
                warped, _ = lrc_fast.elastic_warp(thin_images, regions[:, :h, :w],
                                                  torch.zeros(batch, 2, h, w), backend="triton")
                warped.sum().backward()
                for spacing in (None, 5):
                    lrc_fast.elastic_pair(thin_images.detach(), regions[:, :h, :w], backend="triton",
                                          generator=torch.Generator().manual_seed(0), spacing=spacing)
        images = torch.zeros(batch, 2, height, width, requires_grad=True)
        displacement = torch.zeros(batch, 2, height, width, requires_grad=True)
        for padding in ("border", "zeros", "reflection"):
            warped, _ = lrc_fast.elastic_warp(images, regions, displacement, padding=padding, backend="triton")
            warped.sum().backward()
        for padding, image_dtype, map_ in (("border", torch.float32, regions),
                                           ("reflection", torch.bfloat16, int32_map),
                                           ("zeros", torch.float16, regions)):
            for spacing in (None, 5):  # the dense pair, and the coarse one (the fused warp)
                lrc_fast.elastic_pair(images.detach().to(image_dtype), map_, padding=padding,
                                      generator=torch.Generator().manual_seed(0), backend="triton",
                                      spacing=spacing)
        for spacing in (None, 5):  # the coarse field: noise to node rows, the upsampling
            lrc_fast.random_elastic_field(batch, height, width, 4.0, 3.0, backend="triton", spacing=spacing)
        grid = elastic_warp.smooth_grid_triton(  # the control grid alone
            torch.zeros(batch, 2, *elastic_warp.coarse_shape(height, width, 5)), 0.8, 0.6)
        for launch in elastic_warp.COARSE_LAUNCH_CHOICES:  # the warp of a given grid, as the sweep
            elastic_warp.elastic_warp_coarse_triton(images.detach(), regions, grid, 5, launch=launch)
        if odd:  # the sweeps run at 512 x 512: their launch shapes at the aligned size only
            continue
        feat = torch.zeros(batch, channels, height, width)
        for tile in region_pool.INDEX_TILE_CHOICES:
            index = region_pool.region_index(regions, k, tile, regions_p=int32_map)
            valid = index.counts[0] > 0
            uniforms = torch.zeros(2, batch, k, 5)
            means, idx, hits = region_pool._pool_forward(feat, feat, index.pixels, index.cum, index.local,
                                                         None, valid, uniforms, True, tile)
        feat_cl = feat.contiguous(memory_format=torch.channels_last)
        for bits in region_pool.SEARCH_BITS_CHOICES:  # the search widths the sweep times
            region_pool._pool_forward(feat_cl, feat_cl, index.pixels, index.cum, index.local, None, valid,
                                      uniforms, False, index.tile, bits)
        for blocks in region_pool.GRAD_BLOCK_CHOICES:
            region_pool._pool_backward(means, hits, regions, int32_map.long(), None, list(feat.shape),
                                       feat.dtype, [False, True], 5, [0, 1], blocks)
        for blocks in region_pool.GRAD_BLOCK_CHOICES_CL:  # both gradients channels_last
            region_pool._pool_backward(means, hits, regions, int32_map.long(), None, list(feat.shape),
                                       feat.dtype, [True, True], 5, [0, 1], blocks)
        for layouts in ([False, False], [True, True]):  # the scatter backward the sweep times
            region_pool._pool_scatter_backward(means, idx, list(feat.shape), feat.dtype, layouts, 5, [0, 1])
        means = torch.zeros(2, batch, k, channels, requires_grad=True)
        for precision in ("tf32x3", "tf32"):
            for blocks in region_infonce.BLOCK_CHOICES:
                region_infonce.region_infonce(means, valid, 0.1, precision=precision,
                                              blocks=blocks).sum().backward()
            for blocks in elastic_warp.SMOOTH_BLOCK_CHOICES:
                elastic_warp.field_from_uniform_triton(torch.zeros(batch, 2, height, width), 4.0, 3.0,
                                                       precision=precision, blocks=blocks)


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_launch(launch: Launch, arch: int):
    attrs = {(index,): [["tt.divisibility", 16]] for index in launch.aligned}
    source = ASTSource(launch.fn, launch.signature, launch.constexprs, attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=launch.num_warps, num_stages=launch.num_stages))


def _compile_error(record: dict, arch: int) -> str | None:
    """Compile one recorded launch (in a worker process); the error, or None. A kernel that
    needs more shared memory than one program may have on ``arch`` compiles but fails to launch
    (Triton's OutOfResources at the first call), so that is an error here too."""
    try:
        kernel = compile_launch(Launch.from_record(record), arch)
    except Exception as error:  # noqa: BLE001 -- every kernel that does not compile is reported
        return f"{type(error).__name__}: {error}"
    limit = SHARED_PER_PROGRAM.get(arch)
    if limit is not None and kernel.metadata.shared > limit:
        return f"needs {kernel.metadata.shared} bytes of shared memory, sm_{arch} allows {limit} per program"
    return None


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
    # whole mnemonics only: REDUX (a warp's integer reduction) is not RED (a global reduction)
    widths = collections.Counter(re.findall(r"\b((?:LDGSTS|LDG|STG|RED|ATOMG)(?![A-Z])(?:\.[A-Z0-9_]+)*)", sass))
    return dict(registers=registers, stack=stack, shared=shared, programs=programs,
                warps=programs * num_warps, access=dict(sorted(widths.items())))


def package_kernels() -> list[str]:
    """The names of the launched Triton kernels of every module of ``lrc_fast.kernels``
    (``@triton.jit`` functions named ``*_kernel``; the other jit functions are helpers they call)."""
    import pkgutil

    import lrc_fast.kernels
    from triton.runtime.jit import JITFunction

    names = []
    for info in pkgutil.iter_modules(lrc_fast.kernels.__path__, "lrc_fast.kernels."):
        module = importlib.import_module(info.name)
        names += [name for name, value in vars(module).items()
                  if isinstance(value, JITFunction) and name.endswith("_kernel")]
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (default 90)")
    parser.add_argument("--batch", type=int, default=2, help="images per launch (default 2; strides "
                        "and alignment do not depend on it)")
    parser.add_argument("--check", action="store_true",
                        help="compile every launch variant (coverage_workload) and fail on any error")
    parser.add_argument("--record", choices=("benchmark", "coverage"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.record:  # the child: run the workloads under the interpreter, print the launches
        from lrc_fast.kernels import region_infonce, region_pool
        # the choices the launchers make for CUDA tensors, not for the CPU tensors used here
        region_infonce._launch_precision = lambda tensor, precision: precision
        region_pool._index_method = lambda regions, tile: "sort"
        if args.record == "coverage":
            launches = record_launches(coverage_workload)
        else:
            launches = record_launches(lambda: loss_workload(args.batch, 64, 512, 256, 50))
            launches += record_launches(lambda: elastic_workload(args.batch, 512))
        print(json.dumps(launches))
        return 0
    workload = "coverage" if args.check else "benchmark"
    child = subprocess.run([sys.executable, __file__, "--record", workload, "--batch", str(args.batch)],
                           capture_output=True, text=True)
    if child.returncode != 0:
        print(child.stderr[-4000:])
        return 1
    records = json.loads(child.stdout.splitlines()[-1])
    launches = [Launch.from_record(record) for record in records]
    seen = {}
    for launch, record in zip(launches, records):
        seen.setdefault(launch.key, (launch, record))
    if args.check:
        missing = sorted(set(package_kernels()) - {launch.fn.__name__ for launch in launches})
        if missing:  # the recording hook or the coverage workload lost them: they would go unchecked
            print(f"no launch recorded for {', '.join(missing)}: coverage_workload must launch every kernel")
            return 1
        with concurrent.futures.ProcessPoolExecutor(os.cpu_count() or 1) as pool:
            errors = list(pool.map(_compile_error, [record for _, record in seen.values()],
                                   [args.arch] * len(seen)))
        failed = [f"{launch.label} {launch.signature}: {error}"
                  for (launch, _), error in zip(seen.values(), errors) if error]
        print(f"Triton {triton.__version__}, sm_{args.arch}: {len(seen) - len(failed)} of {len(seen)} "
              f"distinct launches ({len(launches)} recorded) compiled")
        print("\n".join(failed))
        return 1 if failed else 0
    seen = {key: launch for key, (launch, _) in seen.items()}
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
