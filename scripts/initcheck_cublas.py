# Does compute-sanitizer initcheck track memory that cuBLAS GEMMs write on
# this GPU? (docs/reliability.md: on an H100 it reports every element of an
# fp16 GEMM's output as uninitialized, none of an fp32 one.) Run on the GPU
# machine: compute-sanitizer --tool initcheck python3 scripts/initcheck_cublas.py
import torch
torch.manual_seed(0)
for dt in (torch.float16, torch.float32):
    a = torch.randn(512, 4096, device="cuda", dtype=dt)
    b = torch.randn(4096, 512, device="cuda", dtype=dt)
    c = a @ b                      # cuBLAS
    d = (c.float() + 1.0).sum()    # an element-wise kernel reads c
    print(dt, float(d))
    e = torch.empty(512, 512, device="cuda", dtype=dt)
    e.copy_(a[:, :512])            # a copy kernel writes e
    print(dt, float((e.float() + 1.0).sum()))
torch.cuda.synchronize()
