// Halo Weave on current llama.cpp: a model, its context and the attention capture behind a small
// C interface, for halo_client's ctypes backend (halo_client/llama_cpp/). Part of libllama (the
// hooks add this file and halo_capture.cpp to its sources).
//
// The engine decodes with llama_decode (flash attention disabled while export is on, so that a
// softmax exists to capture); when asked, the graphs of a decode copy the newest query's
// post-softmax rows of every layer and head into capture tensors on each layer's device (see
// halo_capture.h), and halo_engine_attention() writes them out in position order. Sampling is the
// caller's: halo_engine_logits() gives the logits of the newest position.
//
// One thread at a time may call the decoding functions of one engine; tokenize and token_piece
// may be called from any thread.
#pragma once

#include "llama.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct halo_engine;

// attention export when loading: off (flash attention is left to llama.cpp, AUTO), on (F16 KV
// cache, as llama.cpp's default), or on with an F32 KV cache (keys and values not rounded to F16)
enum halo_engine_export { HALO_EXPORT_OFF = 0, HALO_EXPORT_ON = 1, HALO_EXPORT_F32KV = 2 };

// what a decode captures: nothing, or the frame of one attention_layout
enum halo_engine_capture { HALO_CAPTURE_NONE = 0, HALO_CAPTURE_FULL = 1, HALO_CAPTURE_LAYER_STATS = 2, HALO_CAPTURE_MODEL_STATS = 3 };

struct halo_engine_params {
    const char * model_path;
    int32_t n_ctx;            // context (the KV cache); 0: the model's trained context
    int32_t n_threads;        // decoding threads (<= 0: llama.cpp's default)
    int32_t n_threads_batch;  // prompt threads (<= 0: as n_threads)
    int32_t n_batch;          // prompt chunk (and ubatch) size (<= 0: 512)
    int32_t n_gpu_layers;     // layers to offload (-1: all)
    int32_t export_mode;      // enum halo_engine_export
    int32_t swa_full;         // 1: a full-size sliding-window cache (same frames, more memory)
    int32_t context_shift;    // 1: a re-request that drops a span of the cached tokens shifts the cache (seq_rm + seq_add) instead of recomputing what follows
    const char * rpc_servers; // comma-separated host:port of ggml rpc-servers to spread the layers over, or NULL
};

struct halo_engine_info {
    int32_t attention_available;
    int32_t n_vocab;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t n_embd;
    int32_t n_ctx_train;
    int32_t n_ctx;            // the context asked for (the KV cache may be padded above it)
    int32_t n_swa;            // sliding window (0: none)
    int32_t bos;
    int32_t eos;
    int32_t eot;
    int32_t add_bos;
    int32_t flash_attn;       // flash attention is on (export off)
    int32_t kv_f32;           // the KV cache is F32
    float rope_freq_base;
    float rope_freq_scale;
    const char * arch;
    const char * description;
    const char * chat_template; // NULL: none in the GGUF
    const char * reason;        // why attention export is unavailable ("" when available)
};

// NULL on failure, with the reason in err (when err_len > 0).
LLAMA_API struct halo_engine * halo_engine_load(const struct halo_engine_params * params, char * err, size_t err_len);
LLAMA_API void halo_engine_free(struct halo_engine * engine);
// The reason the last failing call failed.
LLAMA_API const char * halo_engine_error(const struct halo_engine * engine);
LLAMA_API void halo_engine_get_info(const struct halo_engine * engine, struct halo_engine_info * out);

// llama_tokenize / llama_token_to_piece (special tokens rendered). Return the count; -(needed)
// when the buffer is too small; INT32_MIN for an id outside the vocabulary.
LLAMA_API int32_t halo_engine_tokenize(const struct halo_engine * engine, const char * text, int32_t text_len,
                                       int32_t add_special, int32_t parse_special, int32_t * out, int32_t out_cap);
LLAMA_API int32_t halo_engine_token_piece(const struct halo_engine * engine, int32_t token, char * buf, int32_t buf_len);

// Make `ids` the whole sequence: keeps the longest cached prefix (or, with context_shift, a
// shifted span), decodes the rest; the newest position's logits (and, when asked, frame) follow.
// 0 on success, -1 on failure (halo_engine_error).
LLAMA_API int32_t halo_engine_prefill(struct halo_engine * engine, const int32_t * ids, int32_t n_ids, int32_t capture);
// Append one token and decode it.
LLAMA_API int32_t halo_engine_decode(struct halo_engine * engine, int32_t token, int32_t capture);
// The logits of the newest position (n_vocab floats), valid until the next prefill or decode.
LLAMA_API const float * halo_engine_logits(struct halo_engine * engine);
// Positions in the KV cache (the sequence so far).
LLAMA_API int32_t halo_engine_n_past(const struct halo_engine * engine);
// Writes the frame of the last prefill or decode, asked with `capture`, into out (out_values
// floats: [layers][heads][n_past], [layers][2][n_past] or [1][2][n_past]). 0, or -1 (error).
LLAMA_API int32_t halo_engine_attention(struct halo_engine * engine, float * out, size_t out_values);
// Bytes the last frame read from the capture, and how many of them came from a device (a GPU,
// an RPC server) rather than host memory.
LLAMA_API void halo_engine_capture_bytes(const struct halo_engine * engine, int64_t * bytes, int64_t * device_bytes);
// Forget the cached sequence.
LLAMA_API void halo_engine_reset(struct halo_engine * engine);

#ifdef __cplusplus
}
#endif
