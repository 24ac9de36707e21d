// Halo Weave attention export: the post-softmax attention of every generated token, all
// layers, all query heads, over the whole context, handed to koboldcpp.py as binary frames.
//
// How it works (details in attention_export.cpp):
//  - capture: while an attention request runs, llm_build_kqv() calls halo_attn_graph_hook()
//    right after each layer's softmax; the hook adds one ggml_cpy node that copies the last
//    query row of every head into a capture tensor that the graph allocator does not own
//    (allocated like the KV cache, on each layer's device). After the decode, the normal
//    synchronization (llama_get_logits) has happened and the rows are read once per token.
//    Without an attention request the hook adds nothing: the graph is the unpatched one.
//  - reduced layouts (attention_layout layer_stats / model_stats): the hook adds, instead of the
//    copy, the mean and max over heads of those rows (a custom op on the CPU, pool_2d on a GPU),
//    and for model_stats their reduction over each device's layers, so the capture holds, and
//    the device->host copy carries, 2 rows per layer (or per device) instead of n_head.
//  - columns are KV cells: they are mapped to positions through the cache's cells, so a frame
//    is always in token order, whatever the cache layout.
//  - a bounded queue hands token events (and their frames) from the generation thread to the
//    WebSocket sender; a full queue makes the generation wait, abort wakes it.
//
// The capture itself (graph nodes, statistics, reads, columns in position order) is the core in
// halo_capture.h, which the current-llama.cpp engine (kobold_patch/llama.cpp/) shares.
//
// C++11, no dependency beyond ggml/llama. Compiled as part of gpttype_adapter.cpp (which
// #includes attention_export.cpp after src/llama.cpp, KoboldCPP's single-TU style).
#pragma once

#include <cstdint>
#include <cstddef>
#include <vector>

struct ggml_context;
struct ggml_cgraph;
struct ggml_tensor;
struct llama_context;
struct generation_inputs;

// ---- graph hook (src/llama.cpp, llm_build_kqv, after the softmax) -------------------------
void halo_attn_graph_hook(struct ggml_context * ctx, struct ggml_cgraph * gf, struct ggml_tensor * kq_soft_max, int il);

// ---- model load (gpttype_adapter.cpp) ------------------------------------------------------
// Decides whether attention can be exported for this context (flash attention off, f16/f32 KV
// cache, every layer's softmax reached by the hook) and allocates the capture tensors.
void halo_attn_on_model_loaded(struct llama_context * ctx, bool requested, bool flash_attn, int quant_kv);
// A non-GGUF (legacy) model: no export.
void halo_attn_unsupported(const char * reason);

// ---- generation (gpttype_adapter.cpp, gpttype_generate) ----------------------------------
// True when this generation comes from the Halo Weave stream (input_ids given).
bool halo_gen_begin(const generation_inputs & inputs);
bool halo_gen_active();
bool halo_gen_wants_attention();
const std::vector<int> & halo_gen_input_ids();
// Context shift moved cells: the next attention request reprocesses instead of reusing them.
void halo_note_kv_shifted();
// Before fast-forward: trims `cached` (KoboldCPP's current_context_tokens) to what the KV cache
// really holds (a generation's last sampled token is never decoded, yet kept there), and empties
// it when the input has one token (fast-forward would leave nothing to decode) or when an
// attention request follows a context shift.
void halo_gen_prepare_reuse(struct llama_context * ctx, std::vector<int> & cached, int input_count);
// Banned ids, as KoboldCPP bans tokens (logit set to the lowest logit).
void halo_gen_apply_bans(float * logits, float lowest_logit, int n_vocab);
// After each sampled token: reads the attention (if asked), queues the token event (waits while
// the queue is full). n_past counts the tokens in the KV cache, the query's own included.
// Returns true when the generation must stop (model_info's eos or eot, a stop id, or an error);
// the stream's requests bypass KoboldCPP's own end-of-generation check, which knows another eot.
bool halo_gen_on_token(struct llama_context * ctx, int token_id, int n_past, int remaining);
// Queues the final `done` event; always called (RAII guard in gpttype_generate).
void halo_gen_end();
// Abort: a producer waiting on a full queue wakes and the generation stops.
void halo_gen_abort();

// ---- consumer side (expose.cpp, called by koboldcpp.py) ----------------------------------
enum halo_event_kind { HALO_EVENT_NONE = 0, HALO_EVENT_TOKEN = 1, HALO_EVENT_DONE = 2 };
enum halo_finish { HALO_FINISH_LENGTH = 0, HALO_FINISH_EOS = 1, HALO_FINISH_STOP_TOKEN = 2, HALO_FINISH_ABORTED = 3, HALO_FINISH_ERROR = 4 };

struct halo_event_out
{
    int kind = HALO_EVENT_NONE;
    int index = 0;
    int token_id = 0;
    int finish_reason = 0;
    int token_count = 0;
    int prompt_tokens = 0;
    long long frame_bytes = 0;   // 0: no frame for this token
    double prompt_ms = 0.0;
    double generation_ms = 0.0;
};

// Waits up to timeout_ms for the next event. The frame of the returned event stays valid until
// the next call (halo_event_frame_data). Returns 1 with an event, 0 on timeout.
int halo_next_event(int timeout_ms, halo_event_out * out);
const unsigned char * halo_event_frame_data();
const char * halo_last_error();

struct halo_model_info_out
{
    int available = 0;           // attention export
    int n_vocab = 0;
    int n_layer = 0;
    int n_head = 0;
    int n_head_kv = 0;
    int n_embd = 0;
    int n_ctx_train = 0;
    int bos = -1;
    int eos = -1;
    int eot = -1;
    float rope_freq_base = 0.0f;
    float rope_freq_scale = 0.0f;
    const char * arch = "";
    const char * chat_template = nullptr;  // nullptr: none in the GGUF
    const char * reason = "";              // why export is unavailable
};
int halo_model_info(halo_model_info_out * out);
// llama_tokenize / llama_token_to_piece on the loaded model, into the caller's buffer (thread
// safe). Return the count; -1 when no GGUF model is loaded (or the id is out of the vocabulary);
// -(2 + needed) when the buffer is too small.
int halo_tokenize(const char * text, bool add_special, bool parse_special, int * out, int out_cap);
int halo_token_piece(int token_id, char * buf, int buf_len);
