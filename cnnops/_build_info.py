# Written by setup.py; records what the extension was built against.
TORCH_VERSION = '2.14.1+cu130'
WITH_CUDA = True
CUDA_VERSION = '13.0'
CPU_CAPABILITY = 'avx512'
CUDA_ARCH_LIST = '9.0'
