"""A line-by-line numpy model of the tensor-core conv2d kernels in csrc/cuda/conv2d_mma.cuh.

The kernels have not run on a GPU yet. This model replays, on the CPU, exactly what each
thread of them does: the copy slots and the XOR swizzle of every cp.async (with src-size 0
zero fill), the 3-stage ring of shared-memory buffers in the kernel's order, every ldmatrix
(.x4, plain and .trans) with the register layout the PTX ISA specifies, every mma.sync with
the PTX fragment layouts (m16n8k16 for 16-bit types, m16n8k8 for TF32) and the epilogue's
row/column mapping. tests/test_conv2d_mma.py runs it against torch, so the index reasoning
(fragments, swizzle, tap maps, K order, packing, split-K) is checked here even though the
CUDA code itself is not. It also checks, as compute-sanitizer would, that every global read
is inside its tensor, every shared-memory tile byte is written once per stage, every output
element once, and that no ldmatrix phase or 8-thread cp.async group hits a bank twice.
"""
import numpy as np

BM = BN = 128
STAGES = 3
THREADS = 256
LANES = np.arange(32)
_BYTES16 = np.arange(16)


def swz64(r, c):
    return r * 64 + ((c ^ ((r >> 1) & 3)) << 4)


def swz256(r, c):
    return r * 256 + ((c ^ (r & 7)) << 4)


def source_index(v, size, mode):
    v = np.asarray(v, dtype=np.int64)
    out = v.copy()
    lo, hi = v < 0, v >= size
    if mode == "zeros":
        out[lo | hi] = -1
    elif mode == "reflect":
        out[lo], out[hi] = -v[lo], 2 * (size - 1) - v[hi]
    elif mode == "replicate":
        out[lo], out[hi] = 0, size - 1
    elif mode == "circular":
        out[lo], out[hi] = v[lo] + size, v[hi] - size
    return out


def output_index_for_tap(v, k, stride, pad, dil, out_size):
    num = np.asarray(v, dtype=np.int64) + pad - k * dil
    ok = (num >= 0) & (num % stride == 0)
    o = np.where(ok, num // stride, -1)
    return np.where(o < out_size, o, -1)


class Smem:
    """One operand tile of one stage, with write-once bookkeeping."""

    def __init__(self, nbytes):
        self.b = np.zeros(nbytes, np.uint8)
        self.written = np.zeros(nbytes, np.int32)

    def reset(self):
        self.written[:] = 0


def cp_async(tile, dst, src_bytes, src_elem, ok, elem_size, tensor_bytes, tensor_elems):
    """Vectorised over threads: dst byte offsets, src element offsets, ok masks."""
    assert np.all(dst % 16 == 0)
    idx = dst[:, None] + _BYTES16
    if ok.any():
        s = src_elem[ok]
        assert np.all(s >= 0) and np.all(s + 16 // elem_size <= tensor_elems), "global read out of bounds"
        assert np.all((s * elem_size) % 16 == 0), "unaligned cp.async source"
        tile.b[idx[ok]] = tensor_bytes[(s * elem_size)[:, None] + _BYTES16]
    tile.b[idx[~ok]] = 0
    tile.written[idx] += 1
    # 8 consecutive threads form one shared-memory phase of 16-byte stores
    groups = ((dst % 128) // 16).reshape(-1, 8)
    assert all(len(set(g)) == 8 for g in groups.tolist()), "cp.async bank conflict"


def ldmatrix_x4(tile, addrs, trans):
    """addrs: (32,) byte offsets (lane l gives row l % 8 of matrix l // 8). Returns (4, 32) uint32."""
    assert np.all(addrs % 16 == 0)
    for q in range(4):
        banks = (addrs[8 * q:8 * q + 8] % 128) // 16
        assert len(set(banks.tolist())) == 8, "ldmatrix bank conflict"
    rows = tile.b[addrs[:, None] + _BYTES16]  # (32, 16): row r of matrix q is rows[8q + r]
    regs = np.zeros((4, 32), np.uint32)
    g, t = LANES >> 2, LANES & 3
    for q in range(4):
        m = rows[8 * q:8 * q + 8]  # (8 rows, 16 bytes)
        if not trans:
            word = m[g][np.arange(32)[:, None], 4 * t[:, None] + np.arange(4)]
        else:  # 16-bit elements: lane gets (row 2t, col g) low, (row 2t + 1, col g) high
            lo = m[2 * t][np.arange(32)[:, None], 2 * g[:, None] + np.arange(2)]
            hi = m[2 * t + 1][np.arange(32)[:, None], 2 * g[:, None] + np.arange(2)]
            word = np.concatenate([lo, hi], axis=1)
        regs[q] = np.ascontiguousarray(word.astype(np.uint8)).view("<u4").ravel()
    return regs


def _halves(regs, dtype):
    """(n, 32) uint32 -> (n, 32, 2) values; the lower-indexed element in the low half."""
    if dtype == "float16":
        return np.ascontiguousarray(regs).view("<f2").reshape(regs.shape + (2,)).astype(np.float64)
    # bfloat16: the upper 16 bits of a float32
    u16 = np.ascontiguousarray(regs).view("<u2").reshape(regs.shape + (2,)).astype(np.uint32)
    return (u16 << 16).view("<f4").astype(np.float64)


def tf32_round(x32):
    """cvt.rna.tf32.f32: round a float32 to 10 explicit mantissa bits, ties away from zero."""
    u = np.asarray(x32, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x1000) & 0xFFFFE000).astype(np.uint32)
    return u.view(np.float32).astype(np.float64)


def mma(c, a, b, dtype):
    """c: (4, 32) float64 accumulators; a: (4, 32), b: (2, 32) uint32 registers."""
    g, t = LANES >> 2, LANES & 3
    if dtype in ("float16", "bfloat16"):  # m16n8k16
        A, B = np.zeros((16, 16)), np.zeros((16, 8))
        ah, bh = _halves(a, dtype), _halves(b, dtype)
        for e in range(2):
            A[g, 2 * t + e] = ah[0, :, e]
            A[g + 8, 2 * t + e] = ah[1, :, e]
            A[g, 2 * t + 8 + e] = ah[2, :, e]
            A[g + 8, 2 * t + 8 + e] = ah[3, :, e]
            B[2 * t + e, g] = bh[0, :, e]
            B[2 * t + 8 + e, g] = bh[1, :, e]
    else:  # m16n8k8 .tf32
        A, B = np.zeros((16, 8)), np.zeros((8, 8))
        av, bv = tf32_round(a.view("<f4")), tf32_round(b.view("<f4"))
        A[g, t], A[g + 8, t], A[g, t + 4], A[g + 8, t + 4] = av
        B[t, g], B[t + 4, g] = bv
    D = A @ B
    c[0] += D[g, 2 * t]
    c[1] += D[g, 2 * t + 1]
    c[2] += D[g + 8, 2 * t]
    c[3] += D[g + 8, 2 * t + 1]


def _raw(arr):
    return np.ascontiguousarray(arr).view(np.uint8)


def to_storage(values, dtype):
    """float64 numpy -> the kernel's element storage (numpy array) for dtype."""
    if dtype == "float16":
        return values.astype(np.float16)
    if dtype == "bfloat16":  # values must already be bf16-representable
        u = values.astype(np.float32).view(np.uint32)
        assert np.all(u & 0xFFFF == 0)
        return (u >> 16).astype(np.uint16)
    return values.astype(np.float32)


def conv_gemm(p, act, wpack, bias, out, dtype, dgrad):
    """cnnops_conv2d_mma_kernel over the whole grid. act/wpack/bias: storage arrays (flat),
    out: float64 flat array (the epilogue's value before the dtype conversion)."""
    es = act.itemsize
    E = 16 // es
    BK = 4 * E
    act_b, w_b = _raw(act), _raw(wpack)
    written = np.zeros(out.size, np.int32)
    tid = np.arange(THREADS)
    ld_row, ld_chunk = tid >> 2, tid & 3
    k_tiles = (p["K"] + BK - 1) // BK
    bn = 64 if p["N"] <= 64 else 128  # launch_conv_gemm's choice of the N tile
    warps_n = bn // 32
    warps_m = 8 // warps_n
    warp_rows = BM // warps_m
    tiles_m = warp_rows // 16
    for grp in range(p["groups"]):
        for by in range((p["N"] + bn - 1) // bn):
            for bx in range((p["M"] + BM - 1) // BM):
                m0, n0 = bx * BM, by * bn
                a_ok, a_img, a_y, a_x = [], [], [], []
                for r in range(2):
                    m = m0 + ld_row + 64 * r
                    ok = m < p["M"]
                    mm = np.where(ok, m, 0)
                    t = mm // p["rows_w"]
                    a_ok.append(ok)
                    a_x.append(mm - t * p["rows_w"])
                    a_y.append(t % p["rows_h"])
                    a_img.append((t // p["rows_h"]) * p["act_sn"])
                tiles = [(Smem(8192), Smem(8192)) for _ in range(STAGES)]

                def load_stage(kt, stage):
                    k = kt * BK + ld_chunk * E
                    k_ok = k < p["K"]
                    kk = np.where(k_ok, k, 0)
                    tap = kk // p["C"]
                    c = kk - tap * p["C"]
                    kh = tap // p["kernel_w"]
                    kw = tap - kh * p["kernel_w"]
                    at, bt = tiles[stage]
                    at.reset(), bt.reset()
                    for r in range(2):
                        row = ld_row + 64 * r
                        if dgrad:
                            iy = output_index_for_tap(a_y[r], kh, p["stride_h"], p["pad_h"], p["dil_h"], p["act_h"])
                            ix = output_index_for_tap(a_x[r], kw, p["stride_w"], p["pad_w"], p["dil_w"], p["act_w"])
                        else:
                            iy = source_index(a_y[r] * p["stride_h"] - p["pad_h"] + kh * p["dil_h"], p["act_h"], p["mode"])
                            ix = source_index(a_x[r] * p["stride_w"] - p["pad_w"] + kw * p["dil_w"], p["act_w"], p["mode"])
                        ok = a_ok[r] & k_ok & (iy >= 0) & (ix >= 0)
                        src = a_img[r] + iy * p["act_sh"] + ix * p["act_sw"] + grp * p["C"] + c
                        cp_async(at, swz64(row, ld_chunk), act_b, src, ok, es, act_b, act.size)
                    for r in range(bn // 64):
                        row = ld_row + 64 * r
                        n = n0 + row
                        b_ok = k_ok & (n < p["N"])
                        bsrc = (grp * p["N"] + n) * p["K"] + k
                        cp_async(bt, swz64(row, ld_chunk), w_b, bsrc, b_ok, es, w_b, wpack.size)
                    assert np.all(at.written == 1) and np.all(bt.written[:bn * 64] == 1)
                    assert not bt.written[bn * 64:].any()

                acc = np.zeros((8, tiles_m, 4, 4, 32))
                for s in range(STAGES - 1):
                    if s < k_tiles:
                        load_stage(s, s)
                for kt in range(k_tiles):
                    nxt = kt + STAGES - 1
                    if nxt < k_tiles:
                        assert nxt % STAGES != kt % STAGES
                        load_stage(nxt, nxt % STAGES)
                    at, bt = tiles[kt % STAGES]
                    for ks in range(2):
                        for warp in range(8):
                            wm, wn = warp % warps_m, warp // warps_m
                            a = [ldmatrix_x4(at, swz64(wm * warp_rows + i * 16 + (LANES & 15), 2 * ks + (LANES >> 4)), False)
                                 for i in range(tiles_m)]
                            b = [None] * 4
                            for j in range(2):
                                row = wn * 32 + j * 16 + (LANES & 7) + ((LANES >> 4) << 3)
                                r4 = ldmatrix_x4(bt, swz64(row, 2 * ks + ((LANES >> 3) & 1)), False)
                                b[2 * j], b[2 * j + 1] = r4[0:2], r4[2:4]
                            for i in range(tiles_m):
                                for j in range(4):
                                    mma(acc[warp, i, j], a[i], b[j], dtype)
                # epilogue
                for warp in range(8):
                    wm, wn = warp % warps_m, warp // warps_m
                    for i in range(tiles_m):
                        for h in range(2):
                            m = m0 + wm * warp_rows + i * 16 + (LANES >> 2) + 8 * h
                            for j in range(4):
                                for e in range(2):
                                    n = n0 + wn * 32 + j * 8 + (LANES & 3) * 2 + e
                                    ok = (m < p["M"]) & (n < p["N"])
                                    t = m[ok] // p["rows_w"]
                                    x = m[ok] - t * p["rows_w"]
                                    y, img = t % p["rows_h"], t // p["rows_h"]
                                    off = img * p["out_sn"] + y * p["out_sh"] + x * p["out_sw"] + grp * p["N"] + n[ok]
                                    v = acc[warp, i, j, 2 * h + e][ok]
                                    if bias is not None:
                                        v = v + bias[grp * p["N"] + n[ok]].astype(np.float64)
                                    out[off] = v
                                    np.add.at(written, off, 1)
    return written


def pack_weight(w, groups, dgrad):
    """cnnops_conv2d_mma_pack_weight_kernel: w (Cout, Cin_g, KH, KW) numpy -> flat packed."""
    cout, cin_g, kh_, kw_ = w.shape
    cout_g = cout // groups
    rows, C = (cin_g, cout_g) if dgrad else (cout_g, cin_g)
    total = groups * rows * kh_ * kw_ * C
    idx = np.arange(total)
    c = idx % C
    t = idx // C
    kw = t % kw_
    t //= kw_
    kh = t % kh_
    t //= kh_
    n, grp = t % rows, t // rows
    if dgrad:
        return w[grp * C + c, n, kh, kw]
    return w[grp * rows + n, c, kh, kw]


def wgrad(p, dy, x, dtype):
    """cnnops_conv2d_mma_wgrad_kernel + the ordered reduce; returns (Cout, Kf) float64 with
    Kf = (kh, kw, ic)."""
    es = dy.itemsize
    dy_b, x_b = _raw(dy), _raw(x)
    ws = np.full((p["slices"], p["groups"], p["Mo"], p["Kf"]), np.nan)
    tid = np.arange(THREADS)
    ld_row, ld_chunk = tid >> 4, tid & 15
    bm = 64 if p["Mo"] <= 64 else 128  # the host's choice of the out-channel tile
    a_chunks, warp_rows = bm // 8, bm // 2
    tiles_m = warp_rows // 16
    a_copy = ld_chunk < a_chunks

    def swz_a(r, c):
        return r * (a_chunks * 16) + ((c ^ (r & 7)) << 4)

    for z in range(p["groups"] * p["slices"]):
        grp, slice_ = z // p["slices"], z % p["slices"]
        for by in range((p["Kf"] + BN - 1) // BN):
            for bx in range((p["Mo"] + bm - 1) // bm):
                m0, n0 = bx * bm, by * BN
                oc = m0 + ld_chunk * 8
                oc_ok = oc < p["Mo"]
                kf = n0 + ld_chunk * 8
                kf_ok = kf < p["Kf"]
                kfk = np.where(kf_ok, kf, 0)
                tap = kfk // p["Cin"]
                ic = kfk - tap * p["Cin"]
                kh = tap // p["kernel_w"]
                kw = tap - kh * p["kernel_w"]
                dy_c = grp * p["Mo"] + oc
                x_c = grp * p["Cin"] + ic
                p_begin = slice_ * p["slice_len"]
                p_end = min(p["P"], p_begin + p["slice_len"])
                k_tiles = (p_end - p_begin + 31) // 32 if p_end > p_begin else 0
                tiles = [(Smem(8192), Smem(8192)) for _ in range(STAGES)]

                def load_stage(kt, stage):
                    at, bt = tiles[stage]
                    at.reset(), bt.reset()
                    for r in range(2):
                        row = ld_row + 16 * r
                        pix = p_begin + kt * 32 + row
                        p_ok = pix < p_end
                        pp = np.where(p_ok, pix, 0)
                        t = pp // p["out_w"]
                        ox = pp - t * p["out_w"]
                        oy, img = t % p["out_h"], t // p["out_h"]
                        a_ok = p_ok & oc_ok
                        asrc = img * p["dy_sn"] + oy * p["dy_sh"] + ox * p["dy_sw"] + dy_c
                        c = a_copy  # only these threads copy A
                        cp_async(at, swz_a(row[c], ld_chunk[c]), dy_b, asrc[c], a_ok[c], es, dy_b, dy.size)
                        iy = source_index(oy * p["stride_h"] - p["pad_h"] + kh * p["dil_h"], p["in_h"], p["mode"])
                        ix = source_index(ox * p["stride_w"] - p["pad_w"] + kw * p["dil_w"], p["in_w"], p["mode"])
                        b_ok = p_ok & kf_ok & (iy >= 0) & (ix >= 0)
                        bsrc = img * p["x_sn"] + iy * p["x_sh"] + ix * p["x_sw"] + x_c
                        cp_async(bt, swz256(row, ld_chunk), x_b, bsrc, b_ok, es, x_b, x.size)
                    assert np.all(at.written[:32 * bm * 2] == 1) and not at.written[32 * bm * 2:].any()
                    assert np.all(bt.written == 1)

                acc = np.zeros((8, tiles_m, 4, 4, 32))
                for s in range(STAGES - 1):
                    if s < k_tiles:
                        load_stage(s, s)
                mat, r8 = LANES >> 3, LANES & 7
                for kt in range(k_tiles):
                    nxt = kt + STAGES - 1
                    if nxt < k_tiles:
                        load_stage(nxt, nxt % STAGES)
                    at, bt = tiles[kt % STAGES]
                    for ks in range(2):
                        for warp in range(8):
                            wm, wn = warp & 1, warp >> 1
                            a = []
                            for i in range(tiles_m):
                                krow = ks * 16 + r8 + ((mat >> 1) << 3)
                                chunk = wm * (warp_rows // 8) + i * 2 + (mat & 1)
                                a.append(ldmatrix_x4(at, swz_a(krow, chunk), True))
                            b = [None] * 4
                            for j in range(2):
                                krow = ks * 16 + r8 + ((mat & 1) << 3)
                                chunk = wn * 4 + j * 2 + (mat >> 1)
                                r4 = ldmatrix_x4(bt, swz256(krow, chunk), True)
                                b[2 * j], b[2 * j + 1] = r4[0:2], r4[2:4]
                            for i in range(tiles_m):
                                for j in range(4):
                                    mma(acc[warp, i, j], a[i], b[j], dtype)
                for warp in range(8):
                    wm, wn = warp & 1, warp >> 1
                    for i in range(tiles_m):
                        for h in range(2):
                            m = m0 + wm * warp_rows + i * 16 + (LANES >> 2) + 8 * h
                            for j in range(4):
                                for e in range(2):
                                    n = n0 + wn * 32 + j * 8 + (LANES & 3) * 2 + e
                                    ok = (m < p["Mo"]) & (n < p["Kf"])
                                    ws[slice_, grp, m[ok], n[ok]] = acc[warp, i, j, 2 * h + e][ok]
    assert not np.isnan(ws).any(), "workspace element never written"
    total = np.zeros((p["groups"] * p["Mo"], p["Kf"]))
    for s in range(p["slices"]):  # the reduce kernel's order
        total += ws[s].reshape(p["groups"] * p["Mo"], p["Kf"])
    return total


def wgrad_slices(P, Mo, Kf, groups, out_channels, sms=132):
    """The host's slice choice in conv2d_mma_wgrad.cu."""
    bm = 64 if Mo <= 64 else 128
    tiles = ((Mo + bm - 1) // bm) * ((Kf + BN - 1) // BN) * groups
    slices = max(1, (2 * sms + tiles - 1) // tiles)
    slices = min(slices, max(1, P // (16 * 32)))
    slices = min(slices, max(1, (16 << 20) // (out_channels * Kf)))
    slices = min(slices, 65535 // groups)
    slice_len = ((P + slices - 1) // slices + 31) // 32 * 32
    slices = (P + slice_len - 1) // slice_len
    return slices, slice_len
