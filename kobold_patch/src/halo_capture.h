// Halo Weave's capture core: the post-softmax attention of the newest query, every layer and
// head, copied inside the ggml graph into memory the graph allocator does not own, optionally
// reduced there (per layer, or over the whole model), read once per device after the decode and
// written out in position order.
//
// It knows ggml only. A host (KoboldCPP v1.76's attention_export.cpp, current llama.cpp's
// halo_engine.cpp) tells it where each layer's keys live (device and KV cache), calls
// on_softmax() from the graph builder right after each layer's softmax, and hands it the
// position every KV cell holds when it assembles a frame.
//
//   halo::capture cap;
//   cap.allocate(n_layer, n_head, places, why);    // once, after the context exists
//   cap.set_kind(halo::kind_of(layout));           // before the decode whose frame is wanted
//   ... llama_decode (the graph builder calls cap.begin_graph() and cap.on_softmax(...)) ...
//   cap.check_graph(err); cap.read_rows(); cap.write_frame(ctx_len, cell_positions, out, ...)
//
// C++11 (KoboldCPP v1.76 compiles everything as C++11).
#pragma once

#include "ggml.h"
#include "ggml-backend.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace halo {

// attention_layout (api_spec websocket.md section 4), as the frame header's u16 at offset 14 carries it
enum layout_code { LAYOUT_FULL = 0, LAYOUT_LAYER_STATS = 1, LAYOUT_MODEL_STATS = 2 };

// What the graph builder adds: nothing, or the capture of one layout. Two graphs of different
// kinds are different graphs (a host must not let the allocator reuse one's plan for the other).
enum { KIND_OFF = 0 };
inline int kind_of(int layout) { return 1 + layout; }

// Where one layer's rows are captured: the buffer type (device) its KV cache lives in, and which
// KV cache holds its keys (0, or 1 for the sliding-window cache of an iSWA model: each cache has
// its own cells, so its own n_kv and cell order), with that cache's number of cells.
struct layer_place
{
    ggml_backend_buffer_type_t buft = nullptr;
    int cache = 0;
    int64_t cache_cells = 0;
};

// The positions the cells [0, n) of one KV cache hold for the generating sequence (-1: empty, or
// another sequence's), and whether every position of the context must be among them (a full
// cache) or only those the newest query can see (a sliding-window cache; its host checks that).
struct cell_positions
{
    const int32_t * pos = nullptr;
    int64_t n = 0;
    bool covers_context = true;
};

// Why the last graph is not fit to give a frame; the probe at load uses the same flags.
struct graph_record
{
    bool error = false;             // a softmax of an unexpected shape, a layer seen twice, ...
    std::string what;               // ... which
    int hooked = 0;                 // layers whose softmax the graph builder reported
    bool sinks = false;             // a softmax with attention sinks (rows over the context sum < 1)
    bool mla = false;               // multi-head latent attention (MLA)
    bool kq_bias = false;           // a position bias added to KQ (T5-style)
};

class capture
{
public:
    capture() {}
    ~capture() { release(); }

    // The capture tensors, allocated the way llama.cpp allocates its KV cache: one ggml context and
    // buffer per (buffer type, KV cache), each layer's rows on its layer's device. False with the
    // reason when a buffer cannot be allocated.
    bool allocate(int n_layer, int n_head, const std::vector<layer_place> & places, std::string & why);
    void release();
    bool allocated() const { return !groups_.empty(); }
    int n_layer() const { return n_layer_; }
    int n_head() const { return n_head_; }

    // What the graphs built from now on capture (KIND_OFF or kind_of(layout)).
    void set_kind(int kind) { kind_ = kind; }
    int kind() const { return kind_; }
    int layout() const { return kind_ == KIND_OFF ? LAYOUT_FULL : kind_ - 1; }

    // ---- graph building
    // A new graph starts: forget what the previous one captured.
    void begin_graph();
    // After layer il's softmax kq ([n_kv, n_tokens, n_head, 1], F32): adds the nodes that copy (or
    // reduce) its last query row of every head into the capture. Does nothing while the kind is off.
    void on_softmax(struct ggml_context * ctx, struct ggml_cgraph * gf, struct ggml_tensor * kq, int il);
    // What the builder saw besides the softmax (sinks, MLA, a KQ bias): the frame would not be one
    // post-softmax row per head over the context.
    void note_unsupported(bool sinks, bool mla, bool kq_bias);
    const graph_record & record() const { return record_; }
    // The graph built last captured every layer, once, in the current kind.
    bool check_graph(std::string & err) const;
    // The number of KV cells the last graph attended over, for one cache (0: not seen).
    int64_t graph_cells(int cache) const;

    // ---- after the decode (its logits read, so the device has finished)
    // Reads what the layout needs: one ggml_backend_tensor_get per device group, none for a group
    // in host memory (read in place). Returns the bytes read, and those copied from a device.
    void read_rows(size_t & bytes, size_t & device_bytes);
    // Writes the frame's values: [layers][heads][ctx_len] (full), [layers][2][ctx_len]
    // (layer_stats) or [1][2][ctx_len] (model_stats), float32 or (fp16) float16, columns in
    // position order. `caches[c]` gives the positions of cache c's cells. Positions no cell of a
    // layer's cache holds get 0 (a sliding-window layer cannot see them).
    bool write_frame(int ctx_len, const std::vector<cell_positions> & caches, void * out, bool fp16, std::string & err);
    // floats a frame of this layout and context holds
    size_t frame_values(int ctx_len) const;

private:
    struct group
    {
        ggml_backend_buffer_type_t buft = nullptr;
        int cache = 0;
        int64_t cells = 0;
        ggml_context * ctx = nullptr;
        ggml_backend_buffer_t buf = nullptr;
        ggml_tensor * tensor = nullptr;
        int n_layers = 0;
        int last_layer = -1;        // where model_stats reduces the group's layers
        int64_t graph_n_kv = 0;     // the columns of the last graph (every layer of a group has the same)
        const float * rows = nullptr; // after read_rows: the rows the layout needs, in host memory
    };

    void add_stats(struct ggml_context * ctx, struct ggml_cgraph * gf, const group & g, struct ggml_tensor * src, struct ggml_tensor * dst, bool over_layers);
    bool map_columns(int ctx_len, const std::vector<cell_positions> & caches, std::string & err);
    void combine_model_stats(int ctx_len);
    void write_row(const float * src, const group & g, int ctx_len, void * out, size_t row, bool fp16);

    int n_layer_ = 0;
    int n_head_ = 0;
    int kind_ = KIND_OFF;
    int graph_kind_ = KIND_OFF;
    std::vector<group> groups_;
    std::vector<int> layer_group_;
    std::vector<int> layer_slot_;
    std::vector<char> layer_seen_;
    graph_record record_;
    // frame assembly scratch, kept between frames
    std::vector<float> host_rows_;
    std::vector<std::vector<int32_t> > cell_of_pos_; // per cache: the cell holding each position, -1 none
    std::vector<char> identity_;                     // per cache: cell p holds position p, for every p
    std::vector<float> ordered_;
    std::vector<float> combined_;
};

} // namespace halo
