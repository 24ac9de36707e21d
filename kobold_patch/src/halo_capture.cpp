// Halo Weave's capture core, see halo_capture.h. C++11, ggml only.

#include "halo_capture.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <utility>

namespace halo {

namespace {

// ---- the statistics layouts, computed in the graph next to the softmax ---------------------
// CPU (the layer's rows in host memory): one custom op per layer, every thread on a share of the
// columns, reading the softmax rows once. Elsewhere (a GPU, an RPC server): ggml's pool_2d (AVG
// and MAX over the heads), so the device->host copy carries the statistics only. Either way the
// ops write into the capture tensor, as the full layout's copy does.

// Column blocks small enough for the L1 cache: each input row is read once, the running mean and
// max stay in the block (a loop of adds and maxima the compiler vectorizes)
const int64_t STATS_BLOCK = 256;

// this thread's share [c0, c1) of n columns
void thread_columns(int64_t n, int ith, int nth, int64_t & c0, int64_t & c1)
{
    const int64_t per = (n + nth - 1) / nth;
    c0 = std::min(n, per * ith);
    c1 = std::min(n, c0 + per);
}

// over `rows` rows `stride` bytes apart, the mean of the rows starting at `mean_src` and the max
// of those starting at `max_src`, into dst's two rows (mean, max), for this thread's share of the
// n columns
void rows_mean_max(struct ggml_tensor * dst, const char * mean_src, const char * max_src, int64_t n,
                   int64_t rows, size_t stride, int ith, int nth)
{
    int64_t c0, c1;
    thread_columns(n, ith, nth, c0, c1);
    float * mean = (float *)dst->data;
    float * max = (float *)((char *)dst->data + dst->nb[1]);
    const float inv = 1.0f / (float)rows;
    float m[STATS_BLOCK];
    float x[STATS_BLOCK];
    for (int64_t b0 = c0; b0 < c1; b0 += STATS_BLOCK)
    {
        const int64_t k = std::min(c1 - b0, STATS_BLOCK);
        const float * rm = (const float *)mean_src + b0;
        const float * rx = (const float *)max_src + b0;
        for (int64_t c = 0; c < k; ++c) { m[c] = rm[c]; x[c] = rx[c]; }
        for (int64_t h = 1; h < rows; ++h)
        {
            rm = (const float *)(mean_src + h * stride) + b0;
            rx = (const float *)(max_src + h * stride) + b0;
            for (int64_t c = 0; c < k; ++c)
            {
                m[c] += rm[c];
                x[c] = rx[c] > x[c] ? rx[c] : x[c];
            }
        }
        for (int64_t c = 0; c < k; ++c) { mean[b0 + c] = m[c] * inv; max[b0 + c] = x[c]; }
    }
}

// a = dst [n_kv, 2] (rows: mean, max; row stride free), b = the softmax rows [n_kv, heads]
void head_stats_op(struct ggml_tensor * dst, const struct ggml_tensor * a, const struct ggml_tensor * b, int ith, int nth, void * userdata)
{
    (void)a; (void)userdata;
    const char * rows = (const char *)b->data;
    rows_mean_max(dst, rows, rows, b->ne[0], b->ne[1], b->nb[1], ith, nth);
}

// a = dst [n_kv, 2], b = the group's layer statistics [n_kv, 2, layers]: the mean of the layers'
// means (every layer has the same heads), the max of their maxima
void layer_stats_op(struct ggml_tensor * dst, const struct ggml_tensor * a, const struct ggml_tensor * b, int ith, int nth, void * userdata)
{
    (void)a; (void)userdata;
    const char * means = (const char *)b->data;
    rows_mean_max(dst, means, means + b->nb[1], b->ne[0], b->ne[2], b->nb[2], ith, nth);
}

// pool_2d of x [n, k] over its k rows, as [n, 1] (it reads whole rows, so a strided view is made
// contiguous first)
struct ggml_tensor * pool_rows(struct ggml_context * ctx, struct ggml_tensor * x, enum ggml_op_pool op)
{
    const int k = (int)x->ne[1];
    return ggml_pool_2d(ctx, x, op, 1, k, 1, k, 0, 0);
}

struct ggml_tensor * contiguous(struct ggml_context * ctx, struct ggml_tensor * x)
{
    return ggml_is_contiguous(x) ? x : ggml_cont(ctx, x);
}

} // namespace

// ------------------------------------------------------------------------------------------
// allocation

bool capture::allocate(int n_layer, int n_head, const std::vector<layer_place> & places, std::string & why)
{
    release();
    if (n_layer <= 0 || n_head <= 0 || (int)places.size() != n_layer)
    {
        why = "the attention capture needs one place per layer";
        return false;
    }
    n_layer_ = n_layer;
    n_head_ = n_head;
    layer_group_.assign(n_layer, -1);
    layer_slot_.assign(n_layer, -1);
    layer_seen_.assign(n_layer, 0);
    std::map<std::pair<ggml_backend_buffer_type_t, int>, int> group_of;
    for (int il = 0; il < n_layer; ++il)
    {
        const layer_place & p = places[il];
        const std::pair<ggml_backend_buffer_type_t, int> key(p.buft, p.cache);
        std::map<std::pair<ggml_backend_buffer_type_t, int>, int>::iterator it = group_of.find(key);
        if (it == group_of.end())
        {
            group g;
            g.buft = p.buft;
            g.cache = p.cache;
            g.cells = p.cache_cells;
            groups_.push_back(g);
            it = group_of.insert(std::make_pair(key, (int)groups_.size() - 1)).first;
        }
        group & g = groups_[it->second];
        if (g.cells != p.cache_cells)
        {
            why = "two layers of one KV cache report different cache sizes";
            release();
            return false;
        }
        layer_group_[il] = it->second;
        layer_slot_[il] = g.n_layers++;
        g.last_layer = il;
    }
    for (size_t gi = 0; gi < groups_.size(); ++gi)
    {
        group & g = groups_[gi];
        struct ggml_init_params params = { 2 * ggml_tensor_overhead(), NULL, true };
        g.ctx = ggml_init(params);
        if (!g.ctx) { why = "could not create a ggml context for the attention capture"; release(); return false; }
        // full: [layers][n_head][cells + 1]; the statistics: [layers][2][cells + 1] and, for
        // model_stats, the group's [2][cells + 1] after them
        const int64_t rows = std::max((int64_t)g.n_layers * n_head, (int64_t)(g.n_layers + 1) * 2);
        g.tensor = ggml_new_tensor_1d(g.ctx, GGML_TYPE_F32, rows * (g.cells + 1));
        ggml_format_name(g.tensor, "halo_attn_capture_%d", (int)gi);
        g.buf = ggml_backend_alloc_ctx_tensors_from_buft(g.ctx, g.buft);
        if (!g.buf) { why = "could not allocate the attention capture buffer (out of memory?)"; release(); return false; }
        ggml_backend_buffer_clear(g.buf, 0);
        printf("Attention export: %10s capture buffer = %8.2f MiB (%d layers%s)\n", ggml_backend_buffer_name(g.buf),
               ggml_backend_buffer_get_size(g.buf) / 1024.0 / 1024.0, g.n_layers, g.cache ? ", sliding-window cache" : "");
    }
    return true;
}

void capture::release()
{
    for (size_t i = 0; i < groups_.size(); ++i)
    {
        if (groups_[i].buf) { ggml_backend_buffer_free(groups_[i].buf); }
        if (groups_[i].ctx) { ggml_free(groups_[i].ctx); }
    }
    groups_.clear();
    layer_group_.clear();
    layer_slot_.clear();
    layer_seen_.clear();
    n_layer_ = n_head_ = 0;
    kind_ = graph_kind_ = KIND_OFF;
    record_ = graph_record();
}

// ------------------------------------------------------------------------------------------
// graph building

void capture::begin_graph()
{
    record_ = graph_record();
    graph_kind_ = kind_;
    std::fill(layer_seen_.begin(), layer_seen_.end(), 0);
    for (size_t gi = 0; gi < groups_.size(); ++gi) { groups_[gi].graph_n_kv = 0; }
}

void capture::note_unsupported(bool sinks, bool mla, bool kq_bias)
{
    if (kind_ == KIND_OFF) { return; }
    record_.sinks = record_.sinks || sinks;
    record_.mla = record_.mla || mla;
    record_.kq_bias = record_.kq_bias || kq_bias;
}

// statistics of `src` ([n_kv, heads] rows, or [n_kv, 2, layers] layer statistics) into dst [n_kv, 2]
void capture::add_stats(struct ggml_context * ctx, struct ggml_cgraph * gf, const group & g, struct ggml_tensor * src, struct ggml_tensor * dst, bool over_layers)
{
    if (ggml_backend_buft_is_host(g.buft))
    {
        ggml_build_forward_expand(gf, ggml_map_custom2_inplace(ctx, dst, src, over_layers ? layer_stats_op : head_stats_op, GGML_N_TASKS_MAX, nullptr));
        return;
    }
    struct ggml_tensor * means;
    struct ggml_tensor * maxes;
    if (over_layers)
    {
        // the mean of the layers' means (every layer has the same heads), the max of their maxima
        means = contiguous(ctx, ggml_view_2d(ctx, src, src->ne[0], src->ne[2], src->nb[2], 0));
        maxes = contiguous(ctx, ggml_view_2d(ctx, src, src->ne[0], src->ne[2], src->nb[2], src->nb[1]));
    }
    else
    {
        means = maxes = contiguous(ctx, src);
    }
    struct ggml_tensor * stats = ggml_concat(ctx, pool_rows(ctx, means, GGML_OP_POOL_AVG), pool_rows(ctx, maxes, GGML_OP_POOL_MAX), 1);
    ggml_build_forward_expand(gf, ggml_cpy(ctx, stats, dst)); // dst's stride n_kv + 1: a copy kernel
}

void capture::on_softmax(struct ggml_context * ctx, struct ggml_cgraph * gf, struct ggml_tensor * kq, int il)
{
    if (kind_ == KIND_OFF || groups_.empty())
    {
        return; // nothing asked: the graph stays the unpatched one
    }
    if (il < 0 || il >= n_layer_)
    {
        record_.error = true;
        record_.what = "a softmax outside the model's layers (layer " + std::to_string(il) + ")";
        return;
    }
    group & g = groups_[layer_group_[il]];
    if (kq->type != GGML_TYPE_F32 || kq->ne[2] != n_head_ || kq->ne[3] != 1 || kq->ne[0] > g.cells)
    {
        record_.error = true;
        record_.what = "layer " + std::to_string(il) + "'s softmax is not [n_kv <= cache, tokens, heads, 1] F32";
        return;
    }
    if (layer_seen_[il])
    {
        record_.error = true;
        record_.what = "layer " + std::to_string(il) + " has more than one attention softmax (cross-attention?)";
        return;
    }
    const int64_t n_kv = kq->ne[0];
    const int64_t rows = kq->ne[1];
    const int64_t heads = kq->ne[2];
    if (g.graph_n_kv != 0 && n_kv != g.graph_n_kv)
    {
        record_.error = true;
        record_.what = "the layers of one KV cache attend over different numbers of cells";
        return;
    }
    // stride n_kv + 1: the destination is never contiguous, so ggml-cuda copies it with a kernel
    // (CUDA graphs stay usable) rather than a memcpy node
    const int64_t stride = n_kv + 1;
    const size_t row_bytes = (size_t)stride * sizeof(float);
    // the last query row of every head: row (rows - 1) of [n_kv, rows, heads]
    struct ggml_tensor * src = ggml_view_2d(ctx, kq, n_kv, heads, kq->nb[2], (size_t)(rows - 1) * kq->nb[1]);
    const int slot = layer_slot_[il];
    if (layout() == LAYOUT_FULL)
    {
        struct ggml_tensor * dst = ggml_view_2d(ctx, g.tensor, n_kv, heads, row_bytes, (size_t)slot * (size_t)heads * row_bytes);
        ggml_build_forward_expand(gf, ggml_cpy(ctx, src, dst));
    }
    else
    {
        // this layer's [mean, max] rows; model_stats then reduces the group's layers at its last
        // one (graph order is execution order: every layer's statistics are written by then, as
        // the KV cache's stores are before its reads)
        struct ggml_tensor * dst = ggml_view_2d(ctx, g.tensor, n_kv, 2, row_bytes, (size_t)slot * 2 * row_bytes);
        add_stats(ctx, gf, g, src, dst, false);
        if (layout() == LAYOUT_MODEL_STATS && il == g.last_layer)
        {
            struct ggml_tensor * layer_stats = ggml_view_3d(ctx, g.tensor, n_kv, 2, g.n_layers, row_bytes, 2 * row_bytes, 0);
            struct ggml_tensor * model = ggml_view_2d(ctx, g.tensor, n_kv, 2, row_bytes, (size_t)g.n_layers * 2 * row_bytes);
            add_stats(ctx, gf, g, layer_stats, model, true);
        }
    }
    g.graph_n_kv = n_kv;
    layer_seen_[il] = 1;
    record_.hooked += 1;
}

bool capture::check_graph(std::string & err) const
{
    if (groups_.empty())
    {
        err = "the attention capture is not allocated";
        return false;
    }
    if (record_.error)
    {
        err = record_.what;
        return false;
    }
    if (kind_ == KIND_OFF || graph_kind_ != kind_)
    {
        err = "the last decode was not built to capture this layout";
        return false;
    }
    if (record_.hooked != n_layer_)
    {
        err = "the attention capture reached " + std::to_string(record_.hooked) + " of the " + std::to_string(n_layer_) + " layers in the last decode";
        return false;
    }
    return true;
}

int64_t capture::graph_cells(int cache) const
{
    for (size_t gi = 0; gi < groups_.size(); ++gi)
    {
        if (groups_[gi].cache == cache && groups_[gi].graph_n_kv > 0) { return groups_[gi].graph_n_kv; }
    }
    return 0;
}

// ------------------------------------------------------------------------------------------
// frame assembly, in steps: read the rows (one read per device), map cells to positions,
// combine model_stats over devices and caches, write each row in position order

void capture::read_rows(size_t & bytes, size_t & device_bytes)
{
    bytes = device_bytes = 0;
    const int lay = layout();
    // what the layout needs of each group: its layers' rows at the front of its tensor (full,
    // layer_stats) or its two model rows after them (model_stats)
    size_t device_floats = 0;
    for (size_t gi = 0; gi < groups_.size(); ++gi)
    {
        const group & g = groups_[gi];
        const size_t stride = (size_t)g.graph_n_kv + 1;
        const size_t count = lay == LAYOUT_MODEL_STATS ? 2 * stride : (size_t)g.n_layers * (lay == LAYOUT_FULL ? n_head_ : 2) * stride;
        if (!ggml_backend_buffer_is_host(g.buf)) { device_floats += count; }
    }
    host_rows_.resize(device_floats);
    size_t base = 0;
    for (size_t gi = 0; gi < groups_.size(); ++gi)
    {
        group & g = groups_[gi];
        const size_t stride = (size_t)g.graph_n_kv + 1;
        const size_t offset = lay == LAYOUT_MODEL_STATS ? (size_t)g.n_layers * 2 * stride : 0;
        const size_t count = lay == LAYOUT_MODEL_STATS ? 2 * stride : (size_t)g.n_layers * (lay == LAYOUT_FULL ? n_head_ : 2) * stride;
        bytes += count * sizeof(float);
        if (ggml_backend_buffer_is_host(g.buf))
        {
            g.rows = (const float *)g.tensor->data + offset;
            continue;
        }
        ggml_backend_tensor_get(g.tensor, host_rows_.data() + base, offset * sizeof(float), count * sizeof(float));
        device_bytes += count * sizeof(float);
        g.rows = host_rows_.data() + base;
        base += count;
    }
}

// Every cache's cell -> position map, checked: no position held twice; a full cache holds every
// position of the context. Cells past the last graph's n_kv were not attended.
bool capture::map_columns(int ctx_len, const std::vector<cell_positions> & caches, std::string & err)
{
    cell_of_pos_.resize(caches.size());
    identity_.assign(caches.size(), 1);
    for (size_t c = 0; c < caches.size(); ++c)
    {
        std::vector<int32_t> & cell_of = cell_of_pos_[c];
        cell_of.assign(ctx_len, -1);
        const int64_t n_kv = graph_cells((int)c);
        if (n_kv == 0) { continue; } // no layer uses this cache
        if (caches[c].n < n_kv)
        {
            err = "the KV cache reports fewer cells than the last graph attended over";
            return false;
        }
        int filled = 0;
        for (int64_t cell = 0; cell < n_kv; ++cell)
        {
            const int32_t p = caches[c].pos[cell];
            if (p < 0 || p >= ctx_len)
            {
                continue; // empty, another sequence's, or past the query: masked, 0 after the softmax
            }
            if (cell_of[p] >= 0)
            {
                err = "two KV cells hold position " + std::to_string(p);
                return false;
            }
            cell_of[p] = (int32_t)cell;
            filled += 1;
            if (cell != p) { identity_[c] = 0; }
        }
        if (filled != ctx_len) { identity_[c] = 0; }
        if (caches[c].covers_context && filled != ctx_len)
        {
            err = "the KV cache holds " + std::to_string(filled) + " of the " + std::to_string(ctx_len) + " positions of the context";
            return false;
        }
    }
    return true;
}

// One row of a group's capture, in position order, into row `row` of the frame.
void capture::write_row(const float * src, const group & g, int ctx_len, void * out, size_t row, bool fp16)
{
    const float * ordered = src;
    if (!identity_[g.cache])
    {
        ordered_.resize(ctx_len);
        const int32_t * cell_of = cell_of_pos_[g.cache].data();
        for (int p = 0; p < ctx_len; ++p)
        {
            ordered_[p] = cell_of[p] >= 0 ? src[cell_of[p]] : 0.0f;
        }
        ordered = ordered_.data();
    }
    if (fp16)
    {
        ggml_fp32_to_fp16_row(ordered, (ggml_fp16_t *)out + row * ctx_len, ctx_len);
    }
    else
    {
        memcpy((float *)out + row * ctx_len, ordered, (size_t)ctx_len * sizeof(float));
    }
}

// model_stats from several groups (devices, or the two caches of an iSWA model): each group's
// partial statistics in position order, the means weighted by the group's share of the layers
void capture::combine_model_stats(int ctx_len)
{
    combined_.assign((size_t)2 * ctx_len, 0.0f);
    ordered_.resize(ctx_len);
    for (size_t gi = 0; gi < groups_.size(); ++gi)
    {
        const group & g = groups_[gi];
        const size_t stride = (size_t)g.graph_n_kv + 1;
        const int32_t * cell_of = cell_of_pos_[g.cache].data();
        const float w = (float)g.n_layers / (float)n_layer_;
        for (int p = 0; p < ctx_len; ++p)
        {
            const int32_t c = cell_of[p];
            if (c < 0) { continue; }
            combined_[p] += w * g.rows[c];
            combined_[ctx_len + p] = std::max(combined_[ctx_len + p], g.rows[stride + c]);
        }
    }
}

size_t capture::frame_values(int ctx_len) const
{
    const int lay = layout();
    const size_t layers = lay == LAYOUT_MODEL_STATS ? 1 : (size_t)n_layer_;
    const size_t heads = lay == LAYOUT_FULL ? (size_t)n_head_ : 2;
    return layers * heads * (size_t)ctx_len;
}

bool capture::write_frame(int ctx_len, const std::vector<cell_positions> & caches, void * out, bool fp16, std::string & err)
{
    if (ctx_len <= 0)
    {
        err = "empty context";
        return false;
    }
    if (!map_columns(ctx_len, caches, err))
    {
        return false;
    }
    const int lay = layout();
    if (lay == LAYOUT_MODEL_STATS)
    {
        if (groups_.size() == 1)
        {
            const group & g = groups_[0];
            write_row(g.rows, g, ctx_len, out, 0, fp16);
            write_row(g.rows + g.graph_n_kv + 1, g, ctx_len, out, 1, fp16);
            return true;
        }
        combine_model_stats(ctx_len);
        if (fp16) { ggml_fp32_to_fp16_row(combined_.data(), (ggml_fp16_t *)out, 2 * ctx_len); }
        else { memcpy(out, combined_.data(), combined_.size() * sizeof(float)); }
        return true;
    }
    const int heads = lay == LAYOUT_FULL ? n_head_ : 2;
    for (int il = 0; il < n_layer_; ++il)
    {
        const group & g = groups_[layer_group_[il]];
        const size_t stride = (size_t)g.graph_n_kv + 1;
        const float * layer_rows = g.rows + (size_t)layer_slot_[il] * heads * stride;
        for (int h = 0; h < heads; ++h)
        {
            write_row(layer_rows + (size_t)h * stride, g, ctx_len, out, (size_t)il * heads + h, fp16);
        }
    }
    return true;
}

} // namespace halo
