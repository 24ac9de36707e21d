// Halo Weave on current llama.cpp, see halo_engine.h. Compiled into libllama, so the context, the
// model and the KV caches' cells are reachable; the capture itself is halo_capture.cpp (shared
// with the KoboldCPP v1.76 patch).

#include "halo_engine.h"
#include "halo_hooks.h"
#include "halo_capture.h"

#include "llama-arch.h"
#include "llama-context.h"
#include "llama-hparams.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-model.h"
#include "llama-vocab.h"

#include "ggml-backend.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

struct halo_engine
{
    llama_model * model = nullptr;
    llama_context * ctx = nullptr;
    const llama_vocab * vocab = nullptr;
    llama_batch batch = {};
    int32_t n_batch = 512;
    int32_t n_ctx = 0;
    int32_t n_vocab = 0;
    bool context_shift = false;
    bool kv_f32 = false;
    bool iswa = false;                          // a second KV cache for the sliding-window layers

    // ---- what the model is
    std::string arch;
    std::string description;
    std::string chat_template;
    bool has_chat_template = false;
    int32_t eot = -1;

    // ---- attention export
    halo::capture cap;
    bool available = false;
    std::string reason;
    int reserved_kind = halo::KIND_OFF;        // the capture kind the scheduler was last planned for
    std::vector<llama_kv_cache *> caches;      // 0: the (base) cache, 1: the sliding-window cache
    llama_swa_type swa_type = LLAMA_SWA_TYPE_NONE;
    uint32_t n_swa = 0;
    bool frame_ready = false;                  // the last decode captured a frame not read yet
    std::vector<std::vector<int32_t> > cell_pos;
    int64_t frame_bytes = 0;
    int64_t frame_device_bytes = 0;

    // ---- the sequence the KV cache holds (positions 0 .. cached.size() - 1, sequence 0)
    std::vector<llama_token> cached;
    std::string error;
};

// ------------------------------------------------------------------------------------------
// the hooks: which engine a decode belongs to (decodes run on the caller's thread, and so do the
// graph builds inside them)

namespace {

std::mutex g_engines_mtx;
std::vector<halo_engine *> g_engines;
thread_local halo_engine * t_decoding = nullptr;

halo_engine * engine_of(const llama_context * ctx)
{
    std::lock_guard<std::mutex> lock(g_engines_mtx);
    for (size_t i = 0; i < g_engines.size(); ++i)
    {
        if (g_engines[i]->ctx == ctx) { return g_engines[i]; }
    }
    return nullptr;
}

void register_engine(halo_engine * e, bool add)
{
    std::lock_guard<std::mutex> lock(g_engines_mtx);
    g_engines.erase(std::remove(g_engines.begin(), g_engines.end(), e), g_engines.end());
    if (add) { g_engines.push_back(e); }
}

} // namespace

halo_attn_decode_scope::halo_attn_decode_scope(llama_context * ctx, bool & need_reserve)
{
    halo_engine * e = engine_of(ctx);
    t_decoding = e;
    if (e != nullptr && e->cap.kind() != e->reserved_kind)
    {
        // The graphs of another capture kind are other graphs: plan the scheduler again (which
        // also drops the graph kept for reuse), with the worst-case graph of the new kind.
        need_reserve = true;
        e->reserved_kind = e->cap.kind();
    }
}

halo_attn_decode_scope::~halo_attn_decode_scope()
{
    t_decoding = nullptr;
}

void halo_attn_softmax_hook(struct ggml_context * ctx, struct ggml_cgraph * gf, struct ggml_tensor * kq, int il,
                            bool sinks, bool mla, bool kq_bias)
{
    halo_engine * e = t_decoding;
    if (e == nullptr || e->cap.kind() == halo::KIND_OFF)
    {
        return; // no attention asked: the graph is llama.cpp's own
    }
    if (il == 0)
    {
        e->cap.begin_graph(); // layers are built in order: layer 0 starts a new graph
    }
    e->cap.note_unsupported(sinks, mla, kq_bias);
    e->cap.on_softmax(ctx, gf, kq, il);
}

// ------------------------------------------------------------------------------------------
// helpers

namespace {

void copy_error(const std::string & msg, char * err, size_t err_len)
{
    if (err != nullptr && err_len > 0)
    {
        snprintf(err, err_len, "%s", msg.c_str());
    }
}

std::string meta_string(const llama_model * model, const char * key, bool & found)
{
    std::vector<char> buf(256);
    int32_t n = llama_model_meta_val_str(model, key, buf.data(), buf.size());
    if (n >= (int32_t)buf.size())
    {
        buf.resize(n + 1);
        n = llama_model_meta_val_str(model, key, buf.data(), buf.size());
    }
    found = n >= 0;
    return found ? std::string(buf.data(), n) : std::string();
}

// The end-of-turn token, by the rule the project's servers share (api_spec): the GGUF's
// tokenizer.ggml.eot_token_id, else the first of llama.cpp's end-of-turn texts, in this order,
// that the vocabulary holds as one token.
int32_t end_of_turn_id(const llama_model * model, const llama_vocab * vocab)
{
    bool found = false;
    meta_string(model, "tokenizer.ggml.eot_token_id", found);
    if (found)
    {
        return llama_vocab_eot(vocab);
    }
    static const char * const texts[] = { "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>" };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); ++i)
    {
        llama_token t[2];
        const int32_t n = llama_tokenize(vocab, texts[i], (int32_t)strlen(texts[i]), t, 2, false, true);
        if (n == 1 && strcmp(llama_vocab_get_text(vocab, t[0]), texts[i]) == 0)
        {
            return t[0];
        }
    }
    return -1;
}

void log_quietly(enum ggml_log_level level, const char * text, void * user)
{
    (void)user;
    static const bool verbose = getenv("HALO_LLAMA_VERBOSE") != nullptr;
    if (verbose || level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR)
    {
        fputs(text, stderr);
    }
}

bool add_rpc_servers(const char * servers, std::string & why)
{
    ggml_backend_reg_t rpc = ggml_backend_reg_by_name("RPC");
    if (rpc == nullptr)
    {
        why = "this libllama was built without the RPC backend: build it with RPC=1 (GGML_RPC=ON)";
        return false;
    }
    typedef ggml_backend_reg_t (*add_server_fn)(const char * endpoint);
    add_server_fn add_server = (add_server_fn)ggml_backend_reg_get_proc_address(rpc, "ggml_backend_rpc_add_server");
    if (add_server == nullptr)
    {
        why = "the RPC backend has no ggml_backend_rpc_add_server";
        return false;
    }
    std::string list(servers);
    size_t start = 0;
    while (start <= list.size())
    {
        const size_t comma = list.find(',', start);
        const std::string endpoint = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!endpoint.empty())
        {
            ggml_backend_reg_t reg = add_server(endpoint.c_str());
            if (reg == nullptr)
            {
                why = "could not reach the rpc-server at " + endpoint;
                return false;
            }
            ggml_backend_register(reg);
        }
        if (comma == std::string::npos) { break; }
        start = comma + 1;
    }
    return true;
}

void batch_fill(halo_engine * e, const llama_token * ids, int32_t n, llama_pos pos0, bool logits_last)
{
    llama_batch & b = e->batch;
    b.n_tokens = n;
    for (int32_t i = 0; i < n; ++i)
    {
        b.token[i] = ids[i];
        b.pos[i] = pos0 + i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = logits_last && i == n - 1;
    }
}

// Decodes ids[from, n) after positions [0, from), the last token's logits kept.
bool decode_span(halo_engine * e, const llama_token * ids, int32_t from, int32_t n)
{
    for (int32_t start = from; start < n; start += e->n_batch)
    {
        const int32_t count = std::min(e->n_batch, n - start);
        batch_fill(e, ids + start, count, start, start + count == n);
        const int32_t rc = llama_decode(e->ctx, e->batch);
        if (rc != 0)
        {
            e->error = "llama_decode failed (" + std::to_string(rc) + ") at position " + std::to_string(start);
            return false;
        }
    }
    return true;
}

void forget_sequence(halo_engine * e)
{
    llama_memory_clear(llama_get_memory(e->ctx), true);
    e->cached.clear();
    e->frame_ready = false;
}

size_t common_prefix(const std::vector<llama_token> & a, const llama_token * b, size_t n)
{
    size_t i = 0;
    const size_t m = std::min(a.size(), n);
    while (i < m && a[i] == b[i]) { ++i; }
    return i;
}

// With context_shift: ids = cached[0, a) + cached[b, b + m) + more, for a span cached[a, b) the
// client dropped (a pruned chat). Returns b and m of the longest such match (m = 0: none).
void find_dropped_span(const halo_engine * e, const llama_token * ids, size_t n, size_t a, size_t & best_b, size_t & best_m)
{
    best_b = 0;
    best_m = 0;
    const std::vector<llama_token> & c = e->cached;
    if (a >= n) { return; }
    for (size_t b = a + 1; b < c.size(); ++b)
    {
        if (c[b] != ids[a]) { continue; }
        size_t m = 0;
        while (b + m < c.size() && a + m < n && c[b + m] == ids[a + m]) { ++m; }
        if (m > best_m) { best_b = b; best_m = m; }
    }
}

// The attention of sliding-window layers reaches back n_swa positions: a prefix is reusable only
// if the sliding-window cache still holds what the next position can see (llama-server's rule).
// Asked before anything is removed: the cache holds the positions [pos_min, pos_max] then.
bool swa_prefix_usable(halo_engine * e, llama_pos n_keep)
{
    if (!e->iswa || n_keep == 0) { return true; }
    const llama_pos pos_min = llama_memory_seq_pos_min(llama_get_memory(e->ctx), 0);
    return pos_min >= 0 && pos_min <= std::max<llama_pos>(0, n_keep - (llama_pos)e->n_swa);
}

// Keeps what the cache can reuse of `ids`; returns how many leading tokens it now holds.
size_t reuse_cache(halo_engine * e, const llama_token * ids, size_t n)
{
    llama_memory_t mem = llama_get_memory(e->ctx);
    size_t keep = common_prefix(e->cached, ids, n);
    if (keep >= n) { keep = n - 1; } // the newest token is decoded again: its logits (and frame) are wanted
    if (!swa_prefix_usable(e, (llama_pos)keep))
    {
        keep = 0;
    }
    if (e->context_shift && keep < e->cached.size() && !e->iswa && llama_memory_can_shift(mem))
    {
        size_t b, m;
        find_dropped_span(e, ids, n, keep, b, m);
        if (m >= 16 && keep + m <= n)
        {
            if (keep + m == n) { --m; } // (as above)
            // drop what follows the kept span, then the span the client dropped, and move the kept
            // span down to close the gap: its keys are re-roped by llama.cpp, not recomputed
            llama_memory_seq_rm(mem, 0, (llama_pos)(b + m), -1);
            llama_memory_seq_rm(mem, 0, (llama_pos)keep, (llama_pos)b);
            llama_memory_seq_add(mem, 0, (llama_pos)b, (llama_pos)(b + m), -(llama_pos)(b - keep));
            e->cached.assign(ids, ids + keep + m);
            return keep + m;
        }
    }
    if (keep > 0 && keep < e->cached.size() && !llama_memory_seq_rm(mem, 0, (llama_pos)keep, -1))
    {
        keep = 0; // (a cache that cannot drop a tail)
    }
    if (keep == 0)
    {
        forget_sequence(e);
        return 0;
    }
    e->cached.resize(keep);
    return keep;
}

bool set_capture(halo_engine * e, int32_t capture)
{
    if (capture < HALO_CAPTURE_NONE || capture > HALO_CAPTURE_MODEL_STATS)
    {
        e->error = "unknown capture " + std::to_string(capture);
        return false;
    }
    if (capture != HALO_CAPTURE_NONE && !e->available)
    {
        e->error = "attention export is unavailable: " + e->reason;
        return false;
    }
    // HALO_CAPTURE_* is 1 + the layout, as halo::kind_of
    e->cap.set_kind(capture == HALO_CAPTURE_NONE ? halo::KIND_OFF : capture);
    e->frame_ready = false;
    return true;
}

// Decides whether attention can be exported, allocates the capture and probes it: one decode must
// reach every layer's softmax, once, with nothing the frame could not show.
void enable_export(halo_engine * e)
{
    const llama_model & model = *e->model;
    const llama_hparams & hp = model.hparams;
    const llama_cparams & cp = e->ctx->get_cparams();
    e->available = false;
    if (cp.flash_attn)
    {
        e->reason = "flash attention is on: it computes no attention matrix";
        return;
    }
    if (llama_model_is_recurrent(&model) || llama_model_is_hybrid(&model))
    {
        e->reason = "this model (" + e->arch + ") has recurrent layers, which have no attention over the context";
        return;
    }
    if (llama_model_has_encoder(&model))
    {
        e->reason = "this model (" + e->arch + ") is an encoder-decoder: its decoder's rows would mix self- and cross-attention";
        return;
    }
    if (llama_model_is_diffusion(&model) || !hp.causal_attn)
    {
        e->reason = "this model (" + e->arch + ") has no causal self-attention over a KV cache";
        return;
    }
    const int n_layer = (int)hp.n_layer();
    const int n_head = n_layer > 0 ? (int)hp.n_head(0) : 0;
    for (int il = 1; il < n_layer; ++il)
    {
        if ((int)hp.n_head(il) != n_head)
        {
            e->reason = "this model has a different number of attention heads per layer";
            return;
        }
    }
    llama_memory_t mem = llama_get_memory(e->ctx);
    e->caches.clear();
    if (llama_kv_cache_iswa * iswa = dynamic_cast<llama_kv_cache_iswa *>(mem))
    {
        e->caches.push_back(iswa->get_base());
        e->caches.push_back(iswa->get_swa());
    }
    else if (llama_kv_cache * kv = dynamic_cast<llama_kv_cache *>(mem))
    {
        e->caches.push_back(kv);
    }
    else
    {
        e->reason = "this model's (" + e->arch + ") memory is not a KV cache the capture can map to positions";
        return;
    }
    const ggml_type tk = e->caches[0]->type_k();
    const ggml_type tv = e->caches[0]->type_v();
    if ((tk != GGML_TYPE_F16 && tk != GGML_TYPE_F32) || (tv != GGML_TYPE_F16 && tv != GGML_TYPE_F32))
    {
        e->reason = "the KV cache is quantized, which needs flash attention";
        return;
    }
    std::vector<halo::layer_place> places(n_layer);
    for (int il = 0; il < n_layer; ++il)
    {
        bool found = false;
        for (size_t c = 0; c < e->caches.size() && !found; ++c)
        {
            const std::vector<uint32_t> ids = e->caches[c]->get_layer_ids();
            if (std::find(ids.begin(), ids.end(), (uint32_t)il) == ids.end()) { continue; }
            ggml_tensor * k = e->caches[c]->get_k_storage(il);
            places[il].buft = k->buffer ? ggml_backend_buffer_get_type(k->buffer) : ggml_backend_cpu_buffer_type();
            places[il].cache = (int)c;
            places[il].cache_cells = e->caches[c]->get_size();
            found = true;
        }
        if (!found)
        {
            e->reason = "layer " + std::to_string(il) + " attends over another layer's KV cache (shared KV), which the capture does not map";
            return;
        }
    }
    std::string why;
    if (!e->cap.allocate(n_layer, n_head, places, why))
    {
        e->reason = why;
        return;
    }
    // the probe
    forget_sequence(e);
    e->cap.set_kind(halo::kind_of(halo::LAYOUT_FULL));
    llama_token probe = llama_vocab_bos(e->vocab);
    if (probe < 0) { probe = 0; }
    batch_fill(e, &probe, 1, 0, true);
    const int32_t rc = llama_decode(e->ctx, e->batch);
    std::string err;
    const bool complete = rc == 0 && e->cap.check_graph(err);
    const halo::graph_record rec = e->cap.record();
    e->cap.set_kind(halo::KIND_OFF);
    forget_sequence(e);
    if (rec.sinks)
    {
        e->reason = "this model (" + e->arch + ") has attention sinks: a row over the context sums to less than 1, which a frame cannot show";
    }
    else if (rec.mla)
    {
        e->reason = "this model (" + e->arch + ") uses multi-head latent attention, whose export is not verified";
    }
    else if (rec.kq_bias)
    {
        e->reason = "this model (" + e->arch + ") adds a position bias to its attention scores, whose export is not verified";
    }
    else if (!complete)
    {
        e->reason = rc != 0 ? "the probe decode failed" : "the probe decode: " + err;
    }
    else
    {
        e->available = true;
        e->reason.clear();
        fprintf(stderr, "Attention export: enabled (%d layers x %d heads%s)\n", n_layer, n_head,
                e->caches.size() > 1 ? ", sliding-window layers on their own cache" : "");
        return;
    }
    e->cap.release();
    fprintf(stderr, "Attention export: unavailable: %s\n", e->reason.c_str());
}

// Each cache's cell -> position map for the frame, checked: a sliding-window cache may lack only
// positions the newest query cannot see.
bool cell_positions(halo_engine * e, int32_t ctx_len, std::vector<halo::cell_positions> & out)
{
    e->cell_pos.resize(e->caches.size());
    out.resize(e->caches.size());
    for (size_t c = 0; c < e->caches.size(); ++c)
    {
        const llama_kv_cells & cells = e->caches[c]->get_cells(0);
        std::vector<int32_t> & pos = e->cell_pos[c];
        pos.assign(cells.size(), -1);
        std::vector<char> held;
        if (c > 0) { held.assign(ctx_len, 0); }
        for (uint32_t i = 0; i < cells.size(); ++i)
        {
            if (!cells.is_empty(i) && cells.seq_has(i, 0))
            {
                pos[i] = cells.pos_get(i);
                if (c > 0 && pos[i] >= 0 && pos[i] < ctx_len) { held[pos[i]] = 1; }
            }
        }
        if (c > 0)
        {
            for (int32_t p = 0; p < ctx_len; ++p)
            {
                if (!held[p] && !llama_hparams::is_masked_swa(e->n_swa, e->swa_type, p, ctx_len - 1))
                {
                    e->error = "the sliding-window cache lacks position " + std::to_string(p) + ", which the newest query can see";
                    return false;
                }
            }
        }
        out[c].pos = pos.data();
        out[c].n = (int64_t)pos.size();
        out[c].covers_context = c == 0;
    }
    return true;
}

} // namespace

// ------------------------------------------------------------------------------------------
// the C interface

struct halo_engine * halo_engine_load(const struct halo_engine_params * p, char * err, size_t err_len)
{
    static std::once_flag once;
    std::call_once(once, []() {
        llama_log_set(log_quietly, nullptr);
        llama_backend_init();
    });
    if (p == nullptr || p->model_path == nullptr)
    {
        copy_error("no model path", err, err_len);
        return nullptr;
    }
    std::string why;
    if (p->rpc_servers != nullptr && p->rpc_servers[0] != '\0' && !add_rpc_servers(p->rpc_servers, why))
    {
        copy_error(why, err, err_len);
        return nullptr;
    }
    halo_engine * e = new halo_engine();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = p->n_gpu_layers;
    e->model = llama_model_load_from_file(p->model_path, mp);
    if (e->model == nullptr)
    {
        delete e;
        copy_error(std::string("llama.cpp could not load the model ") + p->model_path + " (see the log above)", err, err_len);
        return nullptr;
    }
    e->vocab = llama_model_get_vocab(e->model);
    e->n_vocab = llama_vocab_n_tokens(e->vocab);
    e->arch = llm_arch_name(e->model->arch);
    e->context_shift = p->context_shift != 0;
    e->kv_f32 = p->export_mode == HALO_EXPORT_F32KV;
    const int32_t n_ctx_train = llama_model_n_ctx_train(e->model);
    e->n_ctx = p->n_ctx > 0 ? p->n_ctx : n_ctx_train;
    e->n_batch = p->n_batch > 0 ? p->n_batch : 512;

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)e->n_ctx;
    cp.n_batch = cp.n_ubatch = (uint32_t)e->n_batch;
    cp.n_seq_max = 1;
    if (p->n_threads > 0) { cp.n_threads = p->n_threads; }
    cp.n_threads_batch = p->n_threads_batch > 0 ? p->n_threads_batch : cp.n_threads;
    // flash attention computes no attention matrix: export needs it disabled, said so explicitly
    // (llama.cpp's default is AUTO, on where supported)
    cp.flash_attn_type = p->export_mode != HALO_EXPORT_OFF ? LLAMA_FLASH_ATTN_TYPE_DISABLED : LLAMA_FLASH_ATTN_TYPE_AUTO;
    if (e->kv_f32) { cp.type_k = cp.type_v = GGML_TYPE_F32; }
    cp.swa_full = p->swa_full != 0;
    e->ctx = llama_init_from_model(e->model, cp);
    if (e->ctx == nullptr)
    {
        llama_model_free(e->model);
        delete e;
        copy_error("llama.cpp could not create a context of " + std::to_string(cp.n_ctx) + " tokens (out of memory?)", err, err_len);
        return nullptr;
    }
    e->batch = llama_batch_init(e->n_batch, 0, 1);
    e->n_swa = e->model->hparams.n_swa;
    e->swa_type = e->model->hparams.swa_type;
    e->iswa = dynamic_cast<llama_kv_cache_iswa *>(llama_get_memory(e->ctx)) != nullptr;
    bool found = false;
    e->chat_template = meta_string(e->model, "tokenizer.chat_template", found);
    e->has_chat_template = found;
    std::vector<char> desc(256);
    llama_model_desc(e->model, desc.data(), desc.size());
    e->description = desc.data();
    e->eot = end_of_turn_id(e->model, e->vocab);

    register_engine(e, true);
    if (p->export_mode == HALO_EXPORT_OFF)
    {
        e->reason = "the server was started with attention export off";
    }
    else
    {
        enable_export(e);
    }
    return e;
}

void halo_engine_free(struct halo_engine * e)
{
    if (e == nullptr) { return; }
    register_engine(e, false);
    e->cap.release();
    llama_batch_free(e->batch);
    if (e->ctx) { llama_free(e->ctx); }
    if (e->model) { llama_model_free(e->model); }
    delete e;
}

const char * halo_engine_error(const struct halo_engine * e)
{
    return e ? e->error.c_str() : "no engine";
}

void halo_engine_get_info(const struct halo_engine * e, struct halo_engine_info * out)
{
    memset(out, 0, sizeof(*out));
    const llama_model * m = e->model;
    const llama_cparams & cp = e->ctx->get_cparams();
    out->attention_available = e->available ? 1 : 0;
    out->n_vocab = e->n_vocab;
    out->n_layer = llama_model_n_layer(m);
    out->n_head = llama_model_n_head(m);
    out->n_head_kv = llama_model_n_head_kv(m);
    out->n_embd = llama_model_n_embd(m);
    out->n_ctx_train = llama_model_n_ctx_train(m);
    out->n_ctx = e->n_ctx;
    out->n_swa = (int32_t)e->n_swa;
    out->bos = llama_vocab_bos(e->vocab);
    out->eos = llama_vocab_eos(e->vocab);
    out->eot = e->eot;
    out->add_bos = llama_vocab_get_add_bos(e->vocab) ? 1 : 0;
    out->flash_attn = cp.flash_attn ? 1 : 0;
    out->kv_f32 = e->kv_f32 ? 1 : 0;
    out->rope_freq_base = cp.rope_freq_base;
    out->rope_freq_scale = cp.rope_freq_scale;
    out->arch = e->arch.c_str();
    out->description = e->description.c_str();
    out->chat_template = e->has_chat_template ? e->chat_template.c_str() : nullptr;
    out->reason = e->reason.c_str();
}

int32_t halo_engine_tokenize(const struct halo_engine * e, const char * text, int32_t text_len,
                             int32_t add_special, int32_t parse_special, int32_t * out, int32_t out_cap)
{
    return llama_tokenize(e->vocab, text, text_len, out, out_cap, add_special != 0, parse_special != 0);
}

int32_t halo_engine_token_piece(const struct halo_engine * e, int32_t token, char * buf, int32_t buf_len)
{
    if (token < 0 || token >= e->n_vocab) { return INT32_MIN; }
    return llama_token_to_piece(e->vocab, token, buf, buf_len, 0, true);
}

int32_t halo_engine_prefill(struct halo_engine * e, const int32_t * ids, int32_t n_ids, int32_t capture)
{
    e->error.clear();
    if (n_ids <= 0 || n_ids > e->n_ctx)
    {
        e->error = "prefill needs 1 to " + std::to_string(e->n_ctx) + " tokens, got " + std::to_string(n_ids);
        return -1;
    }
    for (int32_t i = 0; i < n_ids; ++i)
    {
        if (ids[i] < 0 || ids[i] >= e->n_vocab)
        {
            e->error = "token id " + std::to_string(ids[i]) + " is outside the vocabulary";
            return -1;
        }
    }
    if (!set_capture(e, capture)) { return -1; }
    const size_t keep = reuse_cache(e, ids, (size_t)n_ids);
    if (!decode_span(e, ids, (int32_t)keep, n_ids))
    {
        forget_sequence(e); // a failed decode leaves the cache in no known state
        return -1;
    }
    e->cached.assign(ids, ids + n_ids);
    e->frame_ready = capture != HALO_CAPTURE_NONE;
    return 0;
}

int32_t halo_engine_decode(struct halo_engine * e, int32_t token, int32_t capture)
{
    e->error.clear();
    if (token < 0 || token >= e->n_vocab)
    {
        e->error = "token id " + std::to_string(token) + " is outside the vocabulary";
        return -1;
    }
    if ((int32_t)e->cached.size() >= e->n_ctx)
    {
        e->error = "the context of " + std::to_string(e->n_ctx) + " tokens is full";
        return -1;
    }
    if (!set_capture(e, capture)) { return -1; }
    const llama_pos pos = (llama_pos)e->cached.size();
    batch_fill(e, &token, 1, pos, true);
    const int32_t rc = llama_decode(e->ctx, e->batch);
    if (rc != 0)
    {
        e->error = "llama_decode failed (" + std::to_string(rc) + ") at position " + std::to_string(pos);
        forget_sequence(e);
        return -1;
    }
    e->cached.push_back(token);
    e->frame_ready = capture != HALO_CAPTURE_NONE;
    return 0;
}

const float * halo_engine_logits(struct halo_engine * e)
{
    return llama_get_logits_ith(e->ctx, -1);
}

int32_t halo_engine_n_past(const struct halo_engine * e)
{
    return (int32_t)e->cached.size();
}

int32_t halo_engine_attention(struct halo_engine * e, float * out, size_t out_values)
{
    e->error.clear();
    if (!e->frame_ready)
    {
        e->error = "no frame to read: the last decode did not capture attention (or it was read already)";
        return -1;
    }
    e->frame_ready = false;
    const int32_t ctx_len = (int32_t)e->cached.size();
    if (out_values != e->cap.frame_values(ctx_len))
    {
        e->error = "the frame has " + std::to_string(e->cap.frame_values(ctx_len)) + " values, the buffer " + std::to_string(out_values);
        return -1;
    }
    std::string err;
    if (!e->cap.check_graph(err))
    {
        e->error = "the attention capture failed: " + err;
        return -1;
    }
    llama_synchronize(e->ctx); // (the logits were read: a no-op then)
    size_t bytes = 0, device_bytes = 0;
    e->cap.read_rows(bytes, device_bytes);
    e->frame_bytes = (int64_t)bytes;
    e->frame_device_bytes = (int64_t)device_bytes;
    std::vector<halo::cell_positions> caches;
    if (!cell_positions(e, ctx_len, caches))
    {
        return -1;
    }
    if (!e->cap.write_frame(ctx_len, caches, out, false, err))
    {
        e->error = "the attention capture failed: " + err;
        return -1;
    }
    return 0;
}

void halo_engine_capture_bytes(const struct halo_engine * e, int64_t * bytes, int64_t * device_bytes)
{
    if (bytes) { *bytes = e->frame_bytes; }
    if (device_bytes) { *device_bytes = e->frame_device_bytes; }
}

void halo_engine_reset(struct halo_engine * e)
{
    forget_sequence(e);
}
