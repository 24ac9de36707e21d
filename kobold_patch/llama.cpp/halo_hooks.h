// The two places Halo Weave hooks into llama.cpp's own files (see halo_engine.cpp).
#pragma once

struct ggml_context;
struct ggml_cgraph;
struct ggml_tensor;
struct llama_context;

// llm_graph_context::build_attn_mha, right after the softmax `kq` of layer il: while a decode of a
// Halo Weave engine asks for attention, adds the nodes that copy (or reduce) the newest query's
// rows into the capture; otherwise adds nothing. The flags say what else the layer's attention
// has (sinks, multi-head latent attention, a KQ bias): such a frame is refused, never sent.
void halo_attn_softmax_hook(struct ggml_context * ctx, struct ggml_cgraph * gf, struct ggml_tensor * kq, int il,
                            bool sinks, bool mla, bool kq_bias);

// llama_context::decode, before it reserves the scheduler: the graphs built during this decode
// belong to `ctx`; when the kind of capture changed since the scheduler was last planned, sets
// `need_reserve` (a capture changes the graph, and the allocator must not reuse a stale plan).
struct halo_attn_decode_scope
{
    halo_attn_decode_scope(struct llama_context * ctx, bool & need_reserve);
    ~halo_attn_decode_scope();
};
