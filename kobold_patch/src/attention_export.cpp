// Halo Weave attention export, see attention_export.h for the design in short.
//
// This file is #included by gpttype_adapter.cpp after src/llama.cpp (KoboldCPP compiles the
// adapter and llama.cpp as one translation unit), so llama_context and the KV cache internals
// are visible here. The capture itself (the graph nodes, the reduced layouts, the reads, the
// columns in position order) is halo_capture.cpp, which the llama.cpp engine shares. C++11.

#include "attention_export.h"
#include "halo_capture.cpp"

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
// attention_layout codes (generation_inputs.halo_attention_layout and the frame header carry them)
using halo::LAYOUT_FULL;
using halo::LAYOUT_LAYER_STATS;
using halo::LAYOUT_MODEL_STATS;

typedef std::chrono::steady_clock clock_type;

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
    halo::capture cap;               // the capture tensors and what the last graph captured

    // ---- graph (written by the hook while the graph is built)
    unsigned long long graph_seq = 0;      // graphs built with the capture on
    unsigned long long frame_graph_seq = 0; // the graph the last frame was read from
    int planned_kind = -1;           // the capture kind the graph allocator last planned for (-1: unknown)

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
    std::vector<int32_t> cell_pos;  // KV cell -> the position it holds (-1: none)

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

// Capture tensors on each layer's device (the KV cache's buffer type), one KV cache: v1.76 has
// no sliding-window cache of its own.
static bool alloc_capture(llama_context * ctx, std::string & why)
{
    state & s = S();
    const llama_model & model = ctx->model;
    const bool offload = ctx->cparams.offload_kqv;
    std::vector<halo::layer_place> places(s.n_layer);
    for (int il = 0; il < s.n_layer; ++il)
    {
        places[il].buft = offload ? model.buft_layer[il].buft : llama_default_buffer_type_cpu(model, true);
        places[il].cache = 0;
        places[il].cache_cells = s.kv_size;
    }
    return s.cap.allocate(s.n_layer, s.n_head, places, why);
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

// ggml's graph allocator (v1.76) reuses its plan when a graph has as many nodes and leafs as the
// last one, assuming the same graph; two kinds of capture can have the same counts with other
// nodes (full: a copy per layer, layer_stats on the CPU: a custom op per layer), and a stale plan
// reads out of its arrays. So when the kind changes, plan again, as llama.cpp does after a K-shift
// (llama_kv_cache_update_internal): with the worst-case graph, here built with the new capture.
static void plan_graph_kind(llama_context * ctx)
{
    state & s = S();
    const int kind = s.cap.kind();
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

} // namespace halo_detail

using namespace halo_detail;

// ------------------------------------------------------------------------------------------
// graph hook

void halo_attn_graph_hook(struct ggml_context * ctx, struct ggml_cgraph * gf, struct ggml_tensor * kq, int il)
{
    state & s = S();
    if (s.cap.kind() == halo::KIND_OFF)
    {
        return; // no attention request: the graph stays the unpatched one
    }
    if (il == 0)
    {
        s.cap.begin_graph(); // layers are built in order: layer 0 starts a new graph
        s.graph_seq += 1;
    }
    s.cap.on_softmax(ctx, gf, kq, il);
}

// ------------------------------------------------------------------------------------------
// model load

void halo_attn_unsupported(const char * reason)
{
    state & s = S();
    s.cap.release();
    s.available = false;
    s.reason = reason;
    s.lctx = nullptr;
    s.model = nullptr;
}

void halo_attn_on_model_loaded(struct llama_context * ctx, bool requested, bool flash_attn, int quant_kv)
{
    state & s = S();
    s.cap.release();
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
        s.reason = why;
        return;
    }
    // probe: one decode with the capture on must reach every layer's softmax
    llama_kv_cache_clear(ctx);
    llama_token probe = llama_token_bos(&model);
    if (probe < 0) { probe = 0; }
    s.gen_layout = LAYOUT_FULL;
    s.cap.set_kind(halo::kind_of(LAYOUT_FULL));
    s.cap.begin_graph();
    int rc = llama_decode(ctx, llama_batch_get_one(&probe, 1, 0, 0));
    s.planned_kind = -1; // the allocator planned for the probe's one-token graph
    std::string probe_err;
    const bool probed = rc == 0 && s.cap.check_graph(probe_err);
    s.cap.set_kind(halo::KIND_OFF);
    llama_synchronize(ctx);
    llama_kv_cache_clear(ctx);
    if (!probed)
    {
        s.cap.release();
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
    s.cap.set_kind(halo::KIND_OFF);
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
            s.cap.set_kind(halo::kind_of(s.gen_layout));
        }
    }
    plan_graph_kind(s.lctx);
    s.cap.begin_graph(); // nothing captured yet for this generation
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

// The frame of the last decode, in named steps: the graph captured every layer of a decode made
// since the last frame; the rows are read (once per device); each KV cell's position is taken
// from the cache; the header is written; the core writes the rows in position order:
// [layers][heads][n_past] (full), [layers][2][n_past] (layer_stats), [1][2][n_past] (model_stats).
static bool check_new_decode(std::string & err)
{
    state & s = S();
    if (!s.cap.check_graph(err))
    {
        return false;
    }
    if (s.graph_seq == s.frame_graph_seq)
    {
        err = "no decode ran since the last frame (nothing new to read)";
        return false;
    }
    s.frame_graph_seq = s.graph_seq;
    return true;
}

// KV cell -> the position it holds for sequence 0 (-1: empty or another sequence's)
static halo::cell_positions kv_cell_positions(const llama_context * ctx)
{
    state & s = S();
    const llama_kv_cache & kv = ctx->kv_self;
    s.cell_pos.assign(kv.cells.size(), -1);
    for (size_t c = 0; c < kv.cells.size(); ++c)
    {
        const llama_kv_cell & cell = kv.cells[c];
        if (cell.pos >= 0 && cell.has_seq_id(0)) { s.cell_pos[c] = cell.pos; }
    }
    halo::cell_positions out;
    out.pos = s.cell_pos.data();
    out.n = (int64_t)s.cell_pos.size();
    out.covers_context = true;
    return out;
}

static void write_frame_header(unsigned char * h, int layout, int layers, int heads, int ctx_len, bool fp16)
{
    state & s = S();
    memcpy(h, "HWAF", 4);
    put_u16(h + 4, layout == LAYOUT_FULL ? 1 : 2); // version: 1 is the full layout, as it always was
    put_u16(h + 6, FRAME_HEADER_BYTES);      // header_size
    put_u32(h + 8, (uint32_t)s.gen_index);   // token_index
    put_u16(h + 12, fp16 ? 2 : 1);
    put_u16(h + 14, (uint32_t)layout);
    put_u32(h + 16, (uint32_t)layers);
    put_u32(h + 20, (uint32_t)heads);
    put_u32(h + 24, (uint32_t)ctx_len);
    put_u32(h + 28, 0);
}

static bool build_frame(llama_context * ctx, int n_past, std::vector<unsigned char> & frame, std::string & err)
{
    state & s = S();
    if (!check_new_decode(err))
    {
        return false;
    }
    // the normal synchronization (llama_get_logits did it already; this is a no-op then)
    llama_synchronize(ctx);
    size_t bytes = 0, device_bytes = 0;
    s.cap.read_rows(bytes, device_bytes);
    s.capture_bytes += (long long)bytes;
    s.device_bytes += (long long)device_bytes;
    s.frames += 1;

    const std::vector<halo::cell_positions> caches(1, kv_cell_positions(ctx));
    const int layout = s.gen_layout;
    const bool fp16 = s.gen_attention == 2;
    const int layers = layout == LAYOUT_MODEL_STATS ? 1 : s.n_layer;
    const int heads = layout == LAYOUT_FULL ? s.n_head : 2;
    frame.resize(FRAME_HEADER_BYTES + s.cap.frame_values(n_past) * (fp16 ? 2 : 4));
    write_frame_header(frame.data(), layout, layers, heads, n_past, fp16);
    // payload: little-endian values (every platform KoboldCPP builds for is little-endian)
    return s.cap.write_frame(n_past, caches, frame.data() + FRAME_HEADER_BYTES, fp16, err);
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
    s.cap.set_kind(halo::KIND_OFF);
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
