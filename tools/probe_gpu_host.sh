#!/usr/bin/env bash
# One-shot probe of the GPU host's environment (what the calibrator and runtime rely on). Writes $OUT/probe.txt.
set -u
exec > >(tee "${OUT:-/tmp}/probe.txt") 2>&1
echo "== host"; hostname; date -u; uname -a; nproc; free -g | head -2
echo "== cpu"; lscpu | grep -E "Model name|Socket|Core|Thread|NUMA|L3|Flags" | sed 's/Flags:.*/&/' | cut -c1-400
grep -o -E "amx_[a-z0-9]+|avx512_bf16|avx512f" /proc/cpuinfo | sort | uniq -c
echo "== numa"; ls /sys/devices/system/node/ | grep node; for n in /sys/devices/system/node/node*; do echo "$n cpus=$(cat $n/cpulist) $(grep MemTotal $n/meminfo)"; done
which numactl taskset || true
echo "== python"; python3 -c "import sys, torch, numpy, pandas; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'onednn', torch.backends.mkldnn.is_available()); print(torch.__config__.show()[:1500])"
python3 -c "import intel_extension_for_pytorch" 2>&1 | tail -1
echo "== nvidia-smi"; nvidia-smi --query-gpu=name,memory.total,memory.used,pcie.link.gen.current,pcie.link.width.current,clocks.sm,clocks.max.sm --format=csv
echo "== onednn verbose (default, then capped)"
for isa in "" AVX512_CORE_BF16 AVX512_CORE; do
  ONEDNN_MAX_CPU_ISA=$isa ONEDNN_VERBOSE=1 python3 -c "
import torch,time
a=torch.randn(256,4096,dtype=torch.bfloat16); w=torch.randn(4096,4096,dtype=torch.bfloat16)
for _ in range(3): torch.nn.functional.linear(a,w)
t=time.perf_counter(); n=20
for _ in range(n): torch.nn.functional.linear(a,w)
dt=(time.perf_counter()-t)/n; print('ISA cap [$isa] linear 256x4096x4096 bf16: %.2f TFLOPS'%(2*256*4096*4096/dt/1e12))
" 2>&1 | grep -E "onednn_verbose|TFLOPS" | grep -E "exec|TFLOPS|info" | head -4
done
echo "== pinned/pageable H2D 1 GB"
python3 - <<'PY'
import torch, time
x=torch.empty(2**30, dtype=torch.uint8).pin_memory(); y=torch.empty(2**30, dtype=torch.uint8, device='cuda')
p=torch.empty(2**30, dtype=torch.uint8)
for src,name in ((x,'pinned'),(p,'pageable')):
    y.copy_(src, non_blocking=True); torch.cuda.synchronize()
    t=time.perf_counter(); 
    for _ in range(5): y.copy_(src, non_blocking=True)
    torch.cuda.synchronize(); print(name, 'H2D GB/s %.1f'%(5*2**30/(time.perf_counter()-t)/1e9))
a=torch.randn(8192,8192,dtype=torch.bfloat16,device='cuda'); torch.cuda.synchronize()
for _ in range(3): a@a
torch.cuda.synchronize(); t=time.perf_counter()
for _ in range(10): a@a
torch.cuda.synchronize(); print('GPU bf16 8192^3 TFLOPS %.0f'%(10*2*8192**3/(time.perf_counter()-t)/1e12))
print('mem_get_info GiB', [v/2**30 for v in torch.cuda.mem_get_info()])
PY
echo "== pip"; python3 -m pip list 2>/dev/null | grep -i -E "^(torch|numpy|pandas|pydantic|pulp|typer|rich|PyYAML|matplotlib|scipy|highspy|intel)" 
