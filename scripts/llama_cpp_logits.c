// llama.cpp's own logits at every position, and its greedy continuation, for given token ids.
//
// A script-time tool of scripts/make_kquant_fixtures.py (Ember never runs it); build it against
// the libllama that script's docstring builds:
//
//     cc -O2 -o llama_cpp_logits scripts/llama_cpp_logits.c -I LLAMA/include \
//         -I LLAMA/ggml/include -L LLAMA/build/bin -lllama -lggml -lggml-base \
//         -Wl,-rpath,LLAMA/build/bin
//
// Usage: llama_cpp_logits MODEL.gguf N_GREEDY < prompts
// stdin: one prompt per line, token ids separated by spaces. For each prompt, stdout gets
// (native-endian int32 / float32, no padding):
//     int32 n_tokens, int32 n_vocab, float32 logits[n_tokens][n_vocab],
//     int32 n_greedy, int32 greedy[n_greedy], float32 decoded[n_greedy][n_vocab]
// The prompt is one llama_decode with every position's logits requested. Then greedy[0] is the
// argmax of its last row, and each greedy[g] is decoded alone on the KV cache, giving
// decoded[g] (whose argmax is greedy[g + 1]), as llama.cpp generates: lowest id on a tie, end
// of text not stopping. `logits` then `decoded` are the logits at every position of
// prompt + greedy, from the batched and the single-token path.
//
// The context keeps K and V in float32 and flash attention off, so that what differs from a
// float reference is what llama.cpp's matrix products do to the quantised weights (activations
// quantised to Q8_K / Q8_0 for the dot products), not an F16 cache.

#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_TOKENS = 512 };

static void quiet_log(enum ggml_log_level level, const char * text, void * user_data) {
    (void) user_data;
    if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static int parse_ids(char * line, llama_token * ids) {
    int n = 0;
    for (char * tok = strtok(line, " \t\r\n"); tok != NULL; tok = strtok(NULL, " \t\r\n")) {
        if (n == MAX_TOKENS) {
            fprintf(stderr, "a prompt of more than %d tokens\n", MAX_TOKENS);
            exit(2);
        }
        char * end = NULL;
        long id = strtol(tok, &end, 10);
        if (*end != '\0' || id < 0) {
            fprintf(stderr, "not a token id: %s\n", tok);
            exit(2);
        }
        ids[n++] = (llama_token) id;
    }
    return n;
}

static void decode(struct llama_context * ctx, struct llama_batch * batch, const llama_token * ids,
                   int n, int first_pos) {
    batch->n_tokens = n;
    for (int i = 0; i < n; i++) {
        batch->token[i] = ids[i];
        batch->pos[i] = first_pos + i;
        batch->n_seq_id[i] = 1;
        batch->seq_id[i][0] = 0;
        batch->logits[i] = 1;
    }
    int rc = llama_decode(ctx, *batch);
    if (rc != 0) {
        fprintf(stderr, "llama_decode returned %d\n", rc);
        exit(1);
    }
}

static llama_token argmax(const float * logits, int n_vocab) {
    llama_token best = 0;
    for (int v = 1; v < n_vocab; v++) {
        if (logits[v] > logits[best]) {
            best = v;
        }
    }
    return best;
}

int main(int argc, char ** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.gguf N_GREEDY < prompts\n", argv[0]);
        return 2;
    }
    const int n_greedy = atoi(argv[2]);
    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    struct llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (model == NULL) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = 2 * MAX_TOKENS;
    cparams.n_batch = MAX_TOKENS;
    cparams.n_ubatch = MAX_TOKENS;
    cparams.n_seq_max = 1;
    cparams.n_threads = 1;
    cparams.n_threads_batch = 1;
    cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cparams.type_k = GGML_TYPE_F32;
    cparams.type_v = GGML_TYPE_F32;
    cparams.no_perf = true;
    struct llama_context * ctx = llama_init_from_model(model, cparams);
    if (ctx == NULL) {
        fprintf(stderr, "cannot make a context for %s\n", argv[1]);
        return 1;
    }

    struct llama_batch batch = llama_batch_init(MAX_TOKENS, 0, 1);
    static char line[16 * MAX_TOKENS];
    llama_token ids[MAX_TOKENS];
    llama_token * greedy = malloc(sizeof(llama_token) * (size_t) (n_greedy > 0 ? n_greedy : 1));
    float * decoded = malloc(sizeof(float) * (size_t) n_vocab * (size_t) (n_greedy > 0 ? n_greedy : 1));
    while (fgets(line, sizeof line, stdin) != NULL) {
        int n = parse_ids(line, ids);
        if (n == 0) {
            continue;
        }
        if (n + n_greedy > 2 * MAX_TOKENS) {
            fprintf(stderr, "%d prompt + %d greedy tokens exceed the context\n", n, n_greedy);
            return 2;
        }
        llama_memory_clear(llama_get_memory(ctx), true);
        decode(ctx, &batch, ids, n, 0);
        fwrite(&n, sizeof n, 1, stdout);
        fwrite(&n_vocab, sizeof n_vocab, 1, stdout);
        for (int i = 0; i < n; i++) {
            fwrite(llama_get_logits_ith(ctx, i), sizeof(float), (size_t) n_vocab, stdout);
        }
        llama_token next = argmax(llama_get_logits_ith(ctx, n - 1), n_vocab);
        for (int g = 0; g < n_greedy; g++) {
            greedy[g] = next;
            decode(ctx, &batch, &next, 1, n + g);
            float * row = decoded + (size_t) g * (size_t) n_vocab;
            memcpy(row, llama_get_logits_ith(ctx, 0), sizeof(float) * (size_t) n_vocab);
            next = argmax(row, n_vocab);
        }
        fwrite(&n_greedy, sizeof n_greedy, 1, stdout);
        fwrite(greedy, sizeof(llama_token), (size_t) n_greedy, stdout);
        fwrite(decoded, sizeof(float), (size_t) n_vocab * (size_t) n_greedy, stdout);
        fflush(stdout);
    }
    free(decoded);
    free(greedy);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
