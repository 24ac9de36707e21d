// Halo Weave attention export, see attention_export.h for the design in short.
//
// This file is #included by gpttype_adapter.cpp after src/llama.cpp (KoboldCPP compiles the
// adapter and llama.cpp as one translation unit), so llama_context and the KV cache internals
// are visible here. C++11.

#include "attention_export.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace halo_detail {

// The queue between the generation thread and the sender: at most this many events, and at
// most this many bytes of frames (one frame is always allowed, however large).
static const size_t QUEUE_MAX_EVENTS = 8;
static const size_t QUEUE_MAX_BYTES = 64u * 1024u * 1024u;
static const int FRAME_HEADER_BYTES = 32;
// attention_layout (api_spec websocket.md section 4), as generation_inputs.halo_attention_layout
// and the frame header's u16 at offset 14 carry it
enum layout_code { LAYOUT_FULL = 0, LAYOUT_LAYER_STATS = 1, LAYOUT_MODEL_STATS = 2 };

typedef std::chrono::steady_clock clock_type;

struct capture_group
{
    ggml_backend_buffer_type_t buft = nullptr;
    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    ggml_tensor * tensor = nullptr;
    int n_layers = 0;
    int last_layer = -1;             // the group's last layer, where model_stats reduces over its layers
};

struct queued_event
{
    halo_event_out meta;
    std::vector<unsigned char> frame;
};

struct state
{
    // ---- model
    llama_context * lctx = nullptr;
    const llama_model * model = nullptr;
    bool available = false;
    std::string reason = "KoboldCPP was started without --attentionexport";
    std::string arch;
    std::string chat_template;
    bool has_chat_template = false;
    int n_layer = 0;
    int n_head = 0;
    int eos_id = -1;
    int eot_id = -1;                 // see end_of_turn_id
    int64_t kv_size = 0;
    std::vector<capture_group> groups;
    std::vector<int> layer_group;   // layer -> group
    std::vector<int> layer_slot;    // layer -> index inside its group

    // ---- graph (written by the hook while the graph is built)
    bool capture_on = false;
    int graph_n_kv = 0;
    int graph_hooked = 0;
    bool graph_error = false;
    unsigned long long graph_seq = 0;      // graphs built with the capture on
    unsigned long long frame_graph_seq = 0; // the graph the last frame was read from
    int planned_kind = -1;           // graph_kind() the graph allocator last planned for (-1: unknown)

    // ---- generation (generation thread)
    bool gen_active = false;
    int gen_attention = 0;          // 0 off, 1 float32, 2 float16
    int gen_layout = LAYOUT_FULL;   // what the graph computes and the frame carries
    long long capture_bytes = 0;    // this generation: bytes read from the capture (device->host off the CPU)
    long long device_bytes = 0;     // ... of which copied from a device
    int frames = 0;
    std::vector<int> input_ids;
    std::vector<int> stop_ids;
    std::vector<int> banned_ids;
    int gen_index = 0;
    int gen_finish = -1;            // natural finish reason, -1 while running
    bool gen_error = false;
    bool kv_shifted = false;
    clock_type::time_point t_begin, t_first;
    std::vector<float> host_rows;   // capture read-back
    std::vector<int> cell_to_pos;
    std::vector<char> pos_seen;
    std::vector<float> f32_row;
    std::vector<float> combined;    // model_stats over several devices

    // ---- queue (shared with the consumer thread)
    std::mutex mtx;
    std::condition_variable cv_data;
    std::condition_variable cv_space;
    std::deque<queued_event> queue;
    size_t queued_bytes = 0;
    bool aborted = false;
    queued_event current;            // the event the consumer holds
    std::vector<std::vector<unsigned char> > frame_pool;
    std::string last_error;
};

static state & S()
{
    static state s;
    return s;
}

static void set_error(const std::string & msg)
{
    state & s = S();
    std::lock_guard<std::mutex> lock(s.mtx);
    s.last_error = msg;
}

static void put_u16(unsigned char * p, uint32_t v) { p[0] = (unsigned char)(v & 0xff); p[1] = (unsigned char)((v >> 8) & 0xff); }
static void put_u32(unsigned char * p, uint32_t v) { put_u16(p, v & 0xffff); put_u16(p + 2, (v >> 16) & 0xffff); }

static void free_capture()
{
    state & s = S();
    for (size_t i = 0; i < s.groups.size(); ++i)
    {
        if (s.groups[i].buf) { ggml_backend_buffer_free(s.groups[i].buf); }
        if (s.groups[i].ctx) { ggml_free(s.groups[i].ctx); }
    }
    s.groups.clear();
    s.layer_group.clear();
    s.layer_slot.clear();
}

// Capture tensors, allocated the way llama_kv_cache_init allocates the KV cache: one ggml
// context and buffer per buffer type, each layer's rows on that layer's device. Each group
// holds [layers_in_group][n_head][kv_size + 1] floats (or the statistics layouts' fewer rows); a
// graph packs its rows with a stride of n_kv + 1 (see the hook) so that one read per group gets
// every layer.
static bool alloc_capture(llama_context * ctx, std::string & why)
{
    state & s = S();
    const llama_model & model = ctx->model;
    const bool offload = ctx->cparams.offload_kqv;
    std::map<ggml_backend_buffer_type_t, int> group_of;
    s.layer_group.assign(s.n_layer, -1);
    s.layer_slot.assign(s.n_layer, -1);
    for (int il = 0; il < s.n_layer; ++il)
    {
        ggml_backend_buffer_type_t buft = offload ? model.buft_layer[il].buft : llama_default_buffer_type_cpu(model, true);
        std::map<ggml_backend_buffer_type_t, int>::iterator it = group_of.find(buft);
        if (it == group_of.end())
        {
            capture_group g;
            g.buft = buft;
            s.groups.push_back(g);
            it = group_of.insert(std::make_pair(buft, (int)s.groups.size() - 1)).first;
        }
        s.layer_group[il] = it->second;
        s.layer_slot[il] = s.groups[it->second].n_layers++;
        s.groups[it->second].last_layer = il;
    }
    size_t total = 0;
    for (size_t gi = 0; gi < s.groups.size(); ++gi)
    {
        capture_group & g = s.groups[gi];
        struct ggml_init_params params = { 2 * ggml_tensor_overhead(), NULL, true };
        g.ctx = ggml_init(params);
        if (!g.ctx) { why = "could not create a ggml context for the attention capture"; return false; }
        // full: [layers][n_head][kv + 1]; the statistics: [layers][2][kv + 1] and, for
        // model_stats, the group's [2][kv + 1] after them
        const int64_t rows = std::max((int64_t)g.n_layers * s.n_head, (int64_t)(g.n_layers + 1) * 2);
        g.tensor = ggml_new_tensor_1d(g.ctx, GGML_TYPE_F32, rows * (s.kv_size + 1));
        ggml_format_name(g.tensor, "halo_attn_capture_%d", (int)gi);
        g.buf = ggml_backend_alloc_ctx_tensors_from_buft(g.ctx, g.buft);
        if (!g.buf) { why = "could not allocate the attention capture buffer (out of memory?)"; return false; }
        ggml_backend_buffer_clear(g.buf, 0);
        total += ggml_backend_buffer_get_size(g.buf);
        printf("Attention export: %10s capture buffer = %8.2f MiB (%d layers)\n", ggml_backend_buffer_name(g.buf), ggml_backend_buffer_get_size(g.buf) / 1024.0 / 1024.0, g.n_layers);
    }
    (void)total;
    return true;
}

// The end-of-turn token: model_info's eot_token_id, and with eos what ends a stream. llama.cpp
// v1.76 takes tokenizer.ggml.eot_token_id, else the first token of its vocabulary hash map (an
// unordered_map: an order of no meaning) whose text is in a list, so a vocabulary holding two of
// them gets either: SmolLM2 (<|endoftext|> 0, <|im_end|> 2) gets 0 here. The project's servers and
// this patch answer from one rule instead: the GGUF key, else the first of llama.cpp's texts, in
// the list's order, that the vocabulary holds (halo_client/reference/gguf_model.py does the same).
static int end_of_turn_id(const llama_model & model)
{
    char value[32];
    if (llama_model_meta_val_str(&model, "tokenizer.ggml.eot_token_id", value, sizeof(value)) >= 0)
    {
        return llama_token_eot(&model); // the file says it: llama.cpp took it
    }
    static const char * const texts[] = { "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>" };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); ++i)
    {
        const auto it = model.vocab.token_to_id.find(texts[i]);
        if (it != model.vocab.token_to_id.end())
        {
            return it->second;
        }
    }
    return -1;
}

// ---- the statistics layouts, computed in the graph next to the softmax ---------------------
// CPU (the layer's rows in host memory): one custom op per layer, every thread on a share of the
// columns, reading the softmax rows once. A GPU: ggml's pool_2d (AVG and MAX over the heads, a
// kernel CUDA has), so the device->host copy carries the statistics only. Either way the ops
// write into the capture tensor, as the full layout's copy does.

// Column blocks small enough for the L1 cache: each input row is read once, the running mean and
// max stay in the block (a loop of adds and maxima the compiler vectorizes)
static const int64_t STATS_BLOCK = 256;

// this thread's share [c0, c1) of n columns
static void thread_columns(int64_t n, int ith, int nth, int64_t & c0, int64_t & c1)
{
    const int64_t per = (n + nth - 1) / nth;
    c0 = std::min(n, per * ith);
    c1 = std::min(n, c0 + per);
}

// over `rows` rows `stride` bytes apart, the mean of the rows starting at `mean_src` and the max
// of those starting at `max_src`, into dst's two rows (mean, max), for this thread's share of the
// n columns
static void rows_mean_max(struct ggml_tensor * dst, const char * mean_src, const char * max_src, int64_t n,
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
static void head_stats_op(struct ggml_tensor * dst, const struct ggml_tensor * a, const struct ggml_tensor * b, int ith, int nth, void * userdata)
{
    (void)a; (void)userdata;
    const char * rows = (const char *)b->data;
    rows_mean_max(dst, rows, rows, b->ne[0], b->ne[1], b->nb[1], ith, nth);
}

// a = dst [n_kv, 2], b = the group's layer statistics [n_kv, 2, layers]: the mean of the layers'
// means (every layer has the same heads), the max of their maxima
static void layer_stats_op(struct ggml_tensor * dst, const struct ggml_tensor * a, const struct ggml_tensor * b, int ith, int nth, void * userdata)
{
    (void)a; (void)userdata;
    const char * means = (const char *)b->data;
    rows_mean_max(dst, means, means + b->nb[1], b->ne[0], b->ne[2], b->nb[2], ith, nth);
}

// pool_2d of x [n, k] over its k rows, as [n, 1] (GPU path: CUDA has the kernel; it reads
// whole rows, so a strided view is made contiguous first)
static struct ggml_tensor * pool_rows(struct ggml_context * ctx, struct ggml_tensor * x, enum ggml_op_pool op)
{
    const int k = (int)x->ne[1];
    return ggml_pool_2d(ctx, x, op, 1, k, 1, k, 0, 0);
}

static struct ggml_tensor * contiguous(struct ggml_context * ctx, struct ggml_tensor * x)
{
    return ggml_is_contiguous(x) ? x : ggml_cont(ctx, x);
}

// statistics of `src` ([n_kv, heads] rows, or [n_kv, 2, layers] layer statistics) into dst [n_kv, 2]
static void add_stats(struct ggml_context * ctx, struct ggml_cgraph * gf, const capture_group & g, struct ggml_tensor * src, struct ggml_tensor * dst, bool over_layers)
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

// What the hook adds to a graph: 0 nothing, 1 + layout the capture of that layout.
static int graph_kind()
{
    state & s = S();
    return s.capture_on ? 1 + s.gen_layout : 0;
}

// ggml's graph allocator (v1.76) reuses its plan when a graph has as many nodes and leafs as the
// last one, assuming the same graph; two kinds of capture can have the same counts with other
// nodes (full: a copy per layer, layer_stats on the CPU: a custom op per layer), and a stale plan
// reads out of its arrays. So when the kind changes, plan again, as llama.cpp does after a K-shift
// (llama_kv_cache_update_internal): with the worst-case graph, here built with the new capture.
static void plan_graph_kind(llama_context * ctx)
{
    state & s = S();
    const int kind = graph_kind();
    if (ctx == nullptr || !s.available || kind == s.planned_kind)
    {
        return; // (without export available the hook never adds a node: nothing to plan for)
    }
    const uint32_t n_seqs = 1;
    const uint32_t n_tokens = std::min(ctx->cparams.n_ctx, ctx->cparams.n_ubatch);
    llama_token token = llama_token_bos(&ctx->model);
    llama_ubatch ubatch = { true, n_tokens, n_tokens / n_seqs, n_seqs, &token, nullptr, nullptr, nullptr, nullptr, nullptr};
    ggml_cgraph * gf = llama_build_graph(*ctx, ubatch, true);
    ggml_backend_sched_reset(ctx->sched);
    if (ggml_backend_sched_reserve(ctx->sched, gf))
    {
        s.planned_kind = kind;
    }
    else
    {
        s.planned_kind = -1;
        printf("\nAttention export: could not plan the compute buffers for this graph (out of memory?)\n");
    }
}

static void reset_graph_record()
{
    state & s = S();
    s.graph_n_kv = 0;
    s.graph_hooked = 0;
    s.graph_error = false;
}

} // namespace halo_detail

using namespace halo_detail;

// ------------------------------------------------------------------------------------------
// graph hook

void halo_attn_graph_hook(struct ggml_context * ctx, struct ggml_cgraph * gf, struct ggml_tensor * kq, int il)
{
    state & s = S();
    if (!s.capture_on)
    {
        return; // no attention request: the graph stays the unpatched one
    }
    if (il == 0)
    {
        reset_graph_record(); // layers are built in order: layer 0 starts a new graph
        s.graph_seq += 1;
    }
    if (il < 0 || il >= s.n_layer || kq->type != GGML_TYPE_F32 || kq->ne[2] != s.n_head || kq->ne[3] != 1 || kq->ne[0] > s.kv_size)
    {
        s.graph_error = true;
        return;
    }
    const int64_t n_kv = kq->ne[0];
    const int64_t rows = kq->ne[1];
    const int64_t heads = kq->ne[2];
    if (s.graph_hooked > 0 && n_kv != s.graph_n_kv)
    {
        s.graph_error = true;
        return;
    }
    const capture_group & g = s.groups[s.layer_group[il]];
    // stride n_kv + 1: the destination is never contiguous, so ggml-cuda copies it with a kernel
    // (CUDA graphs stay usable) rather than a memcpy node
    const int64_t stride = n_kv + 1;
    const size_t row_bytes = (size_t)stride * sizeof(float);
    // the last query row of every head: row (rows - 1) of [n_kv, rows, heads]
    struct ggml_tensor * src = ggml_view_2d(ctx, kq, n_kv, heads, kq->nb[2], (size_t)(rows - 1) * kq->nb[1]);
    if (s.gen_layout == LAYOUT_FULL)
    {
        const size_t offset = (size_t)s.layer_slot[il] * (size_t)heads * row_bytes;
        struct ggml_tensor * dst = ggml_view_2d(ctx, g.tensor, n_kv, heads, row_bytes, offset);
        ggml_build_forward_expand(gf, ggml_cpy(ctx, src, dst));
    }
    else
    {
        // this layer's [mean, max] rows; model_stats then reduces the group's layers at its last
        // one (graph order is execution order: every layer's statistics are written by then)
        struct ggml_tensor * dst = ggml_view_2d(ctx, g.tensor, n_kv, 2, row_bytes, (size_t)s.layer_slot[il] * 2 * row_bytes);
        add_stats(ctx, gf, g, src, dst, false);
        if (s.gen_layout == LAYOUT_MODEL_STATS && il == g.last_layer)
        {
            struct ggml_tensor * layer_stats = ggml_view_3d(ctx, g.tensor, n_kv, 2, g.n_layers, row_bytes, 2 * row_bytes, 0);
            struct ggml_tensor * model = ggml_view_2d(ctx, g.tensor, n_kv, 2, row_bytes, (size_t)g.n_layers * 2 * row_bytes);
            add_stats(ctx, gf, g, layer_stats, model, true);
        }
    }
    s.graph_n_kv = (int)n_kv;
    s.graph_hooked += 1;
}

// ------------------------------------------------------------------------------------------
// model load

void halo_attn_unsupported(const char * reason)
{
    state & s = S();
    free_capture();
    s.available = false;
    s.reason = reason;
    s.lctx = nullptr;
    s.model = nullptr;
}

void halo_attn_on_model_loaded(struct llama_context * ctx, bool requested, bool flash_attn, int quant_kv)
{
    state & s = S();
    free_capture();
    s.lctx = ctx;
    s.model = &ctx->model;
    const llama_model & model = ctx->model;
    const llama_hparams & hparams = model.hparams;
    s.arch = llama_model_arch_name(model.arch);
    s.n_layer = (int)hparams.n_layer;
    s.n_head = s.n_layer > 0 ? (int)hparams.n_head(0) : 0;
    s.kv_size = ctx->kv_self.size;
    s.eos_id = llama_token_eos(&model);
    s.eot_id = end_of_turn_id(model);
    s.has_chat_template = false;
    s.chat_template.clear();
    {
        std::vector<char> buf(1024);
        int32_t n = llama_model_meta_val_str(&model, "tokenizer.chat_template", buf.data(), buf.size());
        if (n >= (int32_t)buf.size())
        {
            buf.resize(n + 1);
            n = llama_model_meta_val_str(&model, "tokenizer.chat_template", buf.data(), buf.size());
        }
        if (n >= 0)
        {
            s.has_chat_template = true;
            s.chat_template.assign(buf.data(), n);
        }
    }

    s.available = false;
    if (!requested)
    {
        s.reason = "KoboldCPP was started without --attentionexport";
        return;
    }
    const bool plain_k = ctx->kv_self.type_k == GGML_TYPE_F16 || ctx->kv_self.type_k == GGML_TYPE_F32;
    const bool plain_v = ctx->kv_self.type_v == GGML_TYPE_F16 || ctx->kv_self.type_v == GGML_TYPE_F32;
    if (quant_kv > 0 || !plain_k || !plain_v)
    {
        s.reason = "the KV cache is quantized (--quantkv), which needs flash attention, and flash attention computes no attention matrix; restart without --quantkv";
        return;
    }
    if (flash_attn || ctx->cparams.flash_attn)
    {
        s.reason = "flash attention is on: it computes no attention matrix; restart without --flashattention";
        return;
    }
    if (llama_model_is_recurrent(&model) || !hparams.causal_attn || ctx->kv_self.recurrent)
    {
        s.reason = "this model (" + s.arch + ") has no causal self-attention over a KV cache";
        return;
    }
    for (int il = 1; il < s.n_layer; ++il)
    {
        if ((int)hparams.n_head(il) != s.n_head)
        {
            s.reason = "this model has a different number of attention heads per layer";
            return;
        }
    }
    std::string why;
    if (!alloc_capture(ctx, why))
    {
        free_capture();
        s.reason = why;
        return;
    }
    // probe: one decode with the capture on must reach every layer's softmax
    llama_kv_cache_clear(ctx);
    llama_token probe = llama_token_bos(&model);
    if (probe < 0) { probe = 0; }
    reset_graph_record();
    s.gen_layout = LAYOUT_FULL;
    s.capture_on = true;
    int rc = llama_decode(ctx, llama_batch_get_one(&probe, 1, 0, 0));
    s.planned_kind = -1; // the allocator planned for the probe's one-token graph
    s.capture_on = false;
    llama_synchronize(ctx);
    llama_kv_cache_clear(ctx);
    if (rc != 0 || s.graph_error || s.graph_hooked != s.n_layer)
    {
        free_capture();
        s.reason = "this model's architecture (" + s.arch + ") does not compute attention where the capture hook is (llm_build_kqv)";
        printf("Attention export: unavailable: %s\n", s.reason.c_str());
        return;
    }
    s.available = true;
    s.reason.clear();
    printf("Attention export: enabled (%d layers x %d heads, up to %lld columns)\n", s.n_layer, s.n_head, (long long)s.kv_size);
}

// ------------------------------------------------------------------------------------------
// generation

bool halo_gen_begin(const generation_inputs & inputs)
{
    state & s = S();
    s.gen_active = inputs.halo_input_count > 0 && inputs.halo_input_ids != nullptr;
    s.capture_on = false;
    s.gen_index = 0;
    s.gen_finish = -1;
    s.gen_error = false;
    s.t_begin = clock_type::now();
    s.t_first = s.t_begin;
    {
        std::lock_guard<std::mutex> lock(s.mtx);
        s.queue.clear();
        s.queued_bytes = 0;
        s.aborted = false;
        s.last_error.clear();
    }
    if (!s.gen_active)
    {
        s.gen_attention = 0;
        plan_graph_kind(s.lctx); // KoboldCPP's own generation: graphs without capture
        return false;
    }
    s.input_ids.assign(inputs.halo_input_ids, inputs.halo_input_ids + inputs.halo_input_count);
    s.stop_ids.assign(inputs.halo_stop_ids, inputs.halo_stop_ids + (inputs.halo_stop_ids ? inputs.halo_stop_count : 0));
    s.banned_ids.assign(inputs.halo_banned_ids, inputs.halo_banned_ids + (inputs.halo_banned_ids ? inputs.halo_banned_count : 0));
    s.gen_attention = inputs.halo_attention;
    s.gen_layout = inputs.halo_attention_layout;
    s.capture_bytes = 0;
    s.device_bytes = 0;
    s.frames = 0;
    if (s.gen_attention != 0)
    {
        if (!s.available)
        {
            set_error("attention export is unavailable: " + s.reason);
            s.gen_error = true;
        }
        else if (s.gen_layout < LAYOUT_FULL || s.gen_layout > LAYOUT_MODEL_STATS)
        {
            set_error("unknown attention layout code " + std::to_string(s.gen_layout));
            s.gen_error = true;
        }
        else
        {
            s.capture_on = true;
        }
    }
    plan_graph_kind(s.lctx);
    reset_graph_record();
    s.frame_graph_seq = s.graph_seq;
    return true;
}

bool halo_gen_active() { return S().gen_active; }
bool halo_gen_wants_attention() { return S().gen_active && S().gen_attention != 0; }
const std::vector<int> & halo_gen_input_ids() { return S().input_ids; }
void halo_note_kv_shifted() { S().kv_shifted = true; }

void halo_gen_prepare_reuse(struct llama_context * ctx, std::vector<int> & cached, int input_count)
{
    state & s = S();
    if (!s.gen_active)
    {
        return;
    }
    if (ctx != nullptr)
    {
        const llama_pos held = llama_kv_cache_seq_pos_max(ctx, 0) + 1;
        if ((llama_pos)cached.size() > held)
        {
            cached.resize(held < 0 ? 0 : held);
        }
    }
    if (input_count <= 1 || (s.gen_attention != 0 && s.kv_shifted))
    {
        cached.clear();
        s.kv_shifted = false; // the cache is recomputed from position 0
    }
}

void halo_gen_apply_bans(float * logits, float lowest_logit, int n_vocab)
{
    state & s = S();
    for (size_t i = 0; i < s.banned_ids.size(); ++i)
    {
        const int t = s.banned_ids[i];
        if (t >= 0 && t < n_vocab) { logits[t] = lowest_logit; }
    }
}

// Reads the captured rows of the last decode and writes the frame: [layers][heads][n_past] for
// the full layout, [layers][2][n_past] for layer_stats, [1][2][n_past] for model_stats.
static bool build_frame(llama_context * ctx, int n_past, std::vector<unsigned char> & frame, std::string & err)
{
    state & s = S();
    if (s.graph_error || s.graph_hooked != s.n_layer || s.graph_n_kv <= 0)
    {
        err = "the attention capture did not reach every layer in the last decode";
        return false;
    }
    if (s.graph_seq == s.frame_graph_seq)
    {
        err = "no decode ran since the last frame (nothing new to read)";
        return false;
    }
    s.frame_graph_seq = s.graph_seq;
    const int n_kv = s.graph_n_kv;
    const int64_t stride = (int64_t)n_kv + 1;
    const int layout = s.gen_layout;
    const int heads = layout == LAYOUT_FULL ? s.n_head : 2;       // rows per layer in the frame
    const int layers = layout == LAYOUT_MODEL_STATS ? 1 : s.n_layer;
    const int64_t per_layer = (int64_t)heads * stride;             // floats per layer in the capture

    // the normal synchronization (llama_get_logits did it already; this is a no-op then)
    llama_synchronize(ctx);
    // one read per device, of what the layout needs: the group's layers are packed at the front
    // of its tensor (model_stats: the group's two rows after them); a group in host memory (CPU
    // backend) is read in place
    std::vector<const float *> group_rows(s.groups.size(), nullptr);
    std::vector<size_t> group_offset(s.groups.size(), 0), group_count(s.groups.size(), 0);
    size_t device_floats = 0;
    for (size_t gi = 0; gi < s.groups.size(); ++gi)
    {
        const int g_layers = s.groups[gi].n_layers;
        group_offset[gi] = layout == LAYOUT_MODEL_STATS ? (size_t)g_layers * 2 * stride : 0;
        group_count[gi] = layout == LAYOUT_MODEL_STATS ? (size_t)2 * stride : (size_t)g_layers * per_layer;
        if (!ggml_backend_buffer_is_host(s.groups[gi].buf)) { device_floats += group_count[gi]; }
    }
    s.host_rows.resize(device_floats);
    size_t base = 0;
    for (size_t gi = 0; gi < s.groups.size(); ++gi)
    {
        s.capture_bytes += (long long)(group_count[gi] * sizeof(float));
        if (ggml_backend_buffer_is_host(s.groups[gi].buf))
        {
            group_rows[gi] = (const float *)s.groups[gi].tensor->data + group_offset[gi];
            continue;
        }
        ggml_backend_tensor_get(s.groups[gi].tensor, s.host_rows.data() + base, group_offset[gi] * sizeof(float), group_count[gi] * sizeof(float));
        s.device_bytes += (long long)(group_count[gi] * sizeof(float));
        group_rows[gi] = s.host_rows.data() + base;
        base += group_count[gi];
    }
    s.frames += 1;
    // model_stats from several devices: combine their partial statistics (weighted by their layers)
    if (layout == LAYOUT_MODEL_STATS && s.groups.size() > 1)
    {
        s.combined.assign((size_t)2 * stride, 0.0f);
        for (size_t gi = 0; gi < s.groups.size(); ++gi)
        {
            const float w = (float)s.groups[gi].n_layers / (float)s.n_layer;
            for (int64_t c = 0; c < stride; ++c)
            {
                s.combined[c] += w * group_rows[gi][c];
                s.combined[stride + c] = gi == 0 ? group_rows[gi][stride + c] : std::max(s.combined[stride + c], group_rows[gi][stride + c]);
            }
        }
        group_rows[0] = s.combined.data();
    }

    // columns are KV cells: map each cell to the position it holds
    const llama_kv_cache & kv = ctx->kv_self;
    const int ctx_len = n_past;
    s.cell_to_pos.assign(n_kv, -1);
    s.pos_seen.assign(ctx_len, 0);
    int filled = 0;
    bool identity = true;
    for (int c = 0; c < n_kv && c < (int)kv.cells.size(); ++c)
    {
        const llama_kv_cell & cell = kv.cells[c];
        if (cell.pos < 0 || cell.pos >= ctx_len || !cell.has_seq_id(0))
        {
            continue;
        }
        if (s.pos_seen[cell.pos])
        {
            err = "two KV cells hold position " + std::to_string(cell.pos);
            return false;
        }
        s.pos_seen[cell.pos] = 1;
        s.cell_to_pos[c] = cell.pos;
        filled += 1;
        if (cell.pos != c) { identity = false; }
    }
    if (filled != ctx_len)
    {
        err = "the KV cache holds " + std::to_string(filled) + " of the " + std::to_string(ctx_len) + " positions of the context";
        return false;
    }

    const int itemsize = s.gen_attention == 2 ? 2 : 4;
    const size_t values = (size_t)layers * heads * ctx_len;
    frame.resize(FRAME_HEADER_BYTES + values * itemsize);
    unsigned char * h = frame.data();
    memcpy(h, "HWAF", 4);
    put_u16(h + 4, layout == LAYOUT_FULL ? 1 : 2); // version: 1 is the full layout, as it always was
    put_u16(h + 6, FRAME_HEADER_BYTES);      // header_size
    put_u32(h + 8, (uint32_t)s.gen_index);   // token_index
    put_u16(h + 12, s.gen_attention == 2 ? 2 : 1);
    put_u16(h + 14, (uint32_t)layout);
    put_u32(h + 16, (uint32_t)layers);
    put_u32(h + 20, (uint32_t)heads);
    put_u32(h + 24, (uint32_t)ctx_len);
    put_u32(h + 28, 0);
    // payload: little-endian values (every platform KoboldCPP builds for is little-endian)
    unsigned char * payload = h + FRAME_HEADER_BYTES;
    if (!identity || itemsize == 2) { s.f32_row.resize(ctx_len); }
    for (int il = 0; il < layers; ++il)
    {
        const float * layer_rows = layout == LAYOUT_MODEL_STATS ? group_rows[0]
            : group_rows[s.layer_group[il]] + (int64_t)s.layer_slot[il] * per_layer;
        for (int hd = 0; hd < heads; ++hd)
        {
            const float * src = layer_rows + (int64_t)hd * stride;
            const size_t row = ((size_t)il * heads + hd) * ctx_len;
            const float * ordered = src;
            if (!identity)
            {
                float * tmp = s.f32_row.data();
                for (int c = 0; c < n_kv; ++c)
                {
                    const int p = s.cell_to_pos[c];
                    if (p >= 0) { tmp[p] = src[c]; }
                }
                ordered = tmp;
            }
            if (itemsize == 4)
            {
                memcpy(payload + row * 4, ordered, (size_t)ctx_len * 4);
            }
            else
            {
                ggml_fp32_to_fp16_row(ordered, (ggml_fp16_t *)(payload + row * 2), ctx_len);
            }
        }
    }
    return true;
}

static std::vector<unsigned char> take_pooled_frame()
{
    state & s = S();
    std::lock_guard<std::mutex> lock(s.mtx);
    if (s.frame_pool.empty()) { return std::vector<unsigned char>(); }
    std::vector<unsigned char> v;
    v.swap(s.frame_pool.back());
    s.frame_pool.pop_back();
    return v;
}

// Queues an event; waits while the queue is full unless `force`. False when aborted.
static bool push_event(queued_event & ev, bool force)
{
    state & s = S();
    std::unique_lock<std::mutex> lock(s.mtx);
    const size_t size = ev.frame.size();
    if (!force)
    {
        while (!s.aborted && !s.queue.empty() && (s.queue.size() >= QUEUE_MAX_EVENTS || s.queued_bytes + size > QUEUE_MAX_BYTES))
        {
            s.cv_space.wait(lock);
        }
        if (s.aborted)
        {
            if (!ev.frame.empty()) { s.frame_pool.push_back(std::vector<unsigned char>()); s.frame_pool.back().swap(ev.frame); }
            return false;
        }
    }
    s.queue.push_back(queued_event());
    s.queue.back().meta = ev.meta;
    s.queue.back().frame.swap(ev.frame);
    s.queued_bytes += size;
    s.cv_data.notify_all();
    return true;
}

bool halo_gen_on_token(struct llama_context * ctx, int token_id, int n_past, int remaining)
{
    state & s = S();
    if (!s.gen_active)
    {
        return false;
    }
    if (s.gen_index == 0)
    {
        s.t_first = clock_type::now();
    }
    if (s.gen_error)
    {
        s.gen_finish = HALO_FINISH_ERROR;
        return true;
    }
    queued_event ev;
    ev.meta.kind = HALO_EVENT_TOKEN;
    ev.meta.index = s.gen_index;
    ev.meta.token_id = token_id;
    if (s.gen_attention != 0)
    {
        ev.frame = take_pooled_frame();
        std::string err;
        if (ctx == nullptr || !build_frame(ctx, n_past, ev.frame, err))
        {
            set_error("attention capture failed at token " + std::to_string(s.gen_index) + ": " + err);
            s.gen_error = true;
            s.gen_finish = HALO_FINISH_ERROR;
            return true;
        }
        ev.meta.frame_bytes = (long long)ev.frame.size();
    }
    s.gen_index += 1;
    bool stop = false;
    if ((s.eos_id >= 0 && token_id == s.eos_id) || (s.eot_id >= 0 && token_id == s.eot_id))
    {
        s.gen_finish = HALO_FINISH_EOS;
        stop = true;
    }
    else
    {
        for (size_t i = 0; i < s.stop_ids.size(); ++i)
        {
            if (s.stop_ids[i] == token_id) { s.gen_finish = HALO_FINISH_STOP_TOKEN; stop = true; break; }
        }
    }
    if (!stop && remaining <= 0 && !s.aborted)
    {
        s.gen_finish = HALO_FINISH_LENGTH;
    }
    if (!push_event(ev, false))
    {
        // aborted while waiting for room: the token is not delivered, the generation stops
        s.gen_index -= 1;
        if (s.gen_finish != HALO_FINISH_EOS && s.gen_finish != HALO_FINISH_STOP_TOKEN) { s.gen_finish = -1; }
        return true;
    }
    return stop;
}

void halo_gen_end()
{
    state & s = S();
    s.capture_on = false;
    if (!s.gen_active)
    {
        return;
    }
    const clock_type::time_point t_end = clock_type::now();
    queued_event ev;
    ev.meta.kind = HALO_EVENT_DONE;
    ev.meta.token_count = s.gen_index;
    ev.meta.prompt_tokens = (int)s.input_ids.size();
    int finish = s.gen_finish;
    bool aborted;
    {
        std::lock_guard<std::mutex> lock(s.mtx);
        aborted = s.aborted;
        if (finish < 0 && !aborted && s.last_error.empty())
        {
            s.last_error = "the generation ended early (the model failed to decode; see the server log)";
        }
    }
    if (s.gen_error || finish == HALO_FINISH_ERROR) { finish = HALO_FINISH_ERROR; }
    else if (finish < 0) { finish = aborted ? HALO_FINISH_ABORTED : HALO_FINISH_ERROR; }
    ev.meta.finish_reason = finish;
    if (s.frames > 0)
    {
        static const char * const names[] = { "full", "layer_stats", "model_stats" };
        printf("\nAttention export: %d frames (%s), %.1f KiB per frame read from the capture, %.1f KiB of it from a device\n",
               s.frames, names[s.gen_layout], s.capture_bytes / 1024.0 / s.frames, s.device_bytes / 1024.0 / s.frames);
        fflush(stdout);
    }
    if (s.gen_index == 0) { s.t_first = t_end; }
    ev.meta.prompt_ms = std::chrono::duration<double, std::milli>(s.t_first - s.t_begin).count();
    ev.meta.generation_ms = std::chrono::duration<double, std::milli>(t_end - s.t_first).count();
    push_event(ev, true);
    s.gen_active = false;
    s.gen_attention = 0;
}

void halo_gen_abort()
{
    state & s = S();
    std::lock_guard<std::mutex> lock(s.mtx);
    s.aborted = true;
    s.cv_space.notify_all();
}

// ------------------------------------------------------------------------------------------
// consumer side

int halo_next_event(int timeout_ms, halo_event_out * out)
{
    state & s = S();
    std::unique_lock<std::mutex> lock(s.mtx);
    if (!s.current.frame.empty())
    {
        s.frame_pool.push_back(std::vector<unsigned char>());
        s.frame_pool.back().swap(s.current.frame);
        if (s.frame_pool.size() > QUEUE_MAX_EVENTS + 2) { s.frame_pool.erase(s.frame_pool.begin()); }
    }
    s.current.meta = halo_event_out();
    if (s.queue.empty())
    {
        s.cv_data.wait_for(lock, std::chrono::milliseconds(timeout_ms < 0 ? 0 : timeout_ms));
    }
    if (s.queue.empty())
    {
        return 0;
    }
    s.current.meta = s.queue.front().meta;
    s.current.frame.swap(s.queue.front().frame);
    s.queue.pop_front();
    s.queued_bytes -= s.current.frame.size();
    s.cv_space.notify_all();
    if (out) { *out = s.current.meta; }
    return 1;
}

const unsigned char * halo_event_frame_data()
{
    state & s = S();
    return s.current.frame.empty() ? nullptr : s.current.frame.data();
}

const char * halo_last_error()
{
    static std::string copy;
    state & s = S();
    std::lock_guard<std::mutex> lock(s.mtx);
    copy = s.last_error;
    return copy.c_str();
}

int halo_model_info(halo_model_info_out * out)
{
    state & s = S();
    if (!out) { return 0; }
    *out = halo_model_info_out();
    out->reason = s.reason.c_str();
    if (!s.model)
    {
        return 0;
    }
    const llama_model & model = *s.model;
    out->available = s.available ? 1 : 0;
    out->n_vocab = llama_n_vocab(&model);
    out->n_layer = llama_n_layer(&model);
    out->n_head = llama_n_head(&model);
    out->n_head_kv = out->n_layer > 0 ? (int)model.hparams.n_head_kv(0) : 0;
    out->n_embd = llama_n_embd(&model);
    out->n_ctx_train = llama_n_ctx_train(&model);
    out->bos = llama_token_bos(&model);
    out->eos = s.eos_id;
    out->eot = s.eot_id;
    out->rope_freq_base = s.lctx ? s.lctx->cparams.rope_freq_base : model.hparams.rope_freq_base_train;
    out->rope_freq_scale = s.lctx ? s.lctx->cparams.rope_freq_scale : model.hparams.rope_freq_scale_train;
    out->arch = s.arch.c_str();
    out->chat_template = s.has_chat_template ? s.chat_template.c_str() : nullptr;
    return 1;
}

int halo_tokenize(const char * text, bool add_special, bool parse_special, int * out, int out_cap)
{
    state & s = S();
    if (!s.model || !text) { return -1; }
    const int32_t len = (int32_t)strlen(text);
    int32_t n = llama_tokenize(s.model, text, len, out, out_cap, add_special, parse_special);
    // n < 0: the buffer is too small, -n tokens are needed (returned as -(n) - 1 - 1 below)
    return n >= 0 ? n : -2 + n; // -2 - needed: keeps -1 for "no model"
}

int halo_token_piece(int token_id, char * buf, int buf_len)
{
    state & s = S();
    if (!s.model) { return -1; }
    if (token_id < 0 || token_id >= llama_n_vocab(s.model)) { return -1; }
    int32_t n = llama_token_to_piece(s.model, token_id, buf, buf_len, 0, true);
    return n >= 0 ? n : -2 + n;
}
