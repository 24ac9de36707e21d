// What current llama.cpp itself computes: each layer's `kq_soft_max` (the last query row of every
// head), read through the eval callback of an unpatched libllama. Slow (the scheduler synchronizes
// at every observed node) and exact: the reference for "the frames are what llama.cpp computed",
// independent of any engine's capture. bench/fidelity_table.py --llama-probe runs it.
//
//   llama_attention_probe MODEL.gguf IDS.bin OUT.bin
//   IDS.bin: int32 n, the n prompt ids, int32 m, the m generated ids (little-endian)
//   OUT.bin: for the prompt's last token, then generated tokens 0 .. m-2, every layer's
//            [heads][ctx] float32, ctx = columns = positions 0 .. ctx-1 (ctx = n, n+1, ...)
//
// Build against a llama.cpp build (e.g. the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp,
// cmake -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF, target llama):
//   g++ -O2 -std=c++17 -I$SRC/include -I$SRC/ggml/include bench/llama_attention_probe.cpp
//       -L$BUILD/bin -lllama -lggml -lggml-base -Wl,-rpath,$BUILD/bin -o llama_attention_probe
// Flash attention off (it computes no attention matrix), an F32 KV cache, and a full-size cache for
// sliding-window layers (`swa_full`), so that a KV cell is a position in every layer.
#include "llama.h"
#include "ggml.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

struct capture { std::map<int, std::vector<float>> rows; int n_head = 0; int ctx = 0; };

static bool cb(struct ggml_tensor * t, bool ask, void * ud) {
    const char * name = ggml_get_name(t);
    bool want = strncmp(name, "kq_soft_max-", 12) == 0;
    if (ask) return want;
    if (!want) return true;
    auto * c = (capture *) ud;
    int il = atoi(name + 12);
    const int64_t n_kv = t->ne[0], n_tok = t->ne[1], n_head = t->ne[2];
    if (t->ne[3] != 1 || t->type != GGML_TYPE_F32) { fprintf(stderr, "unexpected kq shape/type\n"); exit(3); }
    std::vector<float> row((size_t) n_head * c->ctx);
    for (int64_t h = 0; h < n_head; h++) {
        const char * base = (const char *) t->data + (n_tok - 1) * t->nb[1] + h * t->nb[2];
        for (int j = 0; j < c->ctx; j++) row[h * c->ctx + j] = j < n_kv ? *(const float *)(base + j * t->nb[0]) : 0.0f;
    }
    c->rows[il] = row; c->n_head = (int) n_head;
    return true;
}

int main(int argc, char ** argv) {
    if (argc != 4) { fprintf(stderr, "usage: probe MODEL IDS OUT\n"); return 2; }
    FILE * f = fopen(argv[2], "rb");
    if (!f) { fprintf(stderr, "cannot read %s\n", argv[2]); return 2; }
    int n = 0; std::vector<int> prompt, gen;
    bool ok = fread(&n, 4, 1, f) == 1 && n > 0;
    if (ok) { prompt.resize(n); ok = fread(prompt.data(), 4, n, f) == (size_t) n; }
    if (ok) ok = fread(&n, 4, 1, f) == 1 && n > 0;
    if (ok) { gen.resize(n); ok = fread(gen.data(), 4, n, f) == (size_t) n; }
    fclose(f);
    if (!ok) { fprintf(stderr, "%s: not an ids file\n", argv[2]); return 2; }
    llama_backend_init();
    auto mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    capture c;
    auto cp = llama_context_default_params();
    cp.n_ctx = 2048; cp.n_batch = 2048; cp.n_ubatch = 2048; cp.n_threads = 1; cp.n_threads_batch = 1;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32;
    cp.swa_full = true;  // the sliding-window layers' cache as large as the context: cell = position
    cp.cb_eval = cb; cp.cb_eval_user_data = &c;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    const int n_layer = llama_model_n_layer(model);
    FILE * out = fopen(argv[3], "wb");
    auto step = [&](std::vector<int> toks) {
        c.rows.clear(); c.ctx = c.ctx + (int) toks.size();
        llama_batch b = llama_batch_get_one(toks.data(), (int) toks.size());
        if (llama_decode(ctx, b) != 0) { fprintf(stderr, "decode failed\n"); exit(4); }
        llama_synchronize(ctx);
        if ((int) c.rows.size() != n_layer) { fprintf(stderr, "captured %zu of %d layers\n", c.rows.size(), n_layer); exit(5); }
        for (int il = 0; il < n_layer; il++) fwrite(c.rows[il].data(), 4, c.rows[il].size(), out);
    };
    step(prompt);
    for (size_t i = 0; i + 1 < gen.size(); i++) step({gen[i]});
    fclose(out);
    printf("layers %d heads %d\n", n_layer, c.n_head);
    llama_free(ctx); llama_model_free(model);
    return 0;
}
