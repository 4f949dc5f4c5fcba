#pragma once
/// The reverse example's model (examples/reverse.cpp), shared with bench/load_bench.cpp so the
/// benchmark times the same network the example trains:
///   examples::Reverser model(/*vocab=*/11, /*max_len=*/24, /*dim=*/64, /*heads=*/4, /*layers=*/2);
///   Tensor logits = model(ids);   // ids (B, T) int64 -> (B, T, vocab)
#include <kiln/kiln.hpp>

namespace examples {

// GPT-style decoder: token + learned position embeddings, a stack of pre-norm transformer
// layers with causal self-attention, a final norm (the stack's) and a linear read-out.
struct ReverserImpl : kiln::nn::Module {
  ReverserImpl(std::int64_t vocab, std::int64_t max_len, std::int64_t dim, std::int64_t heads, std::int64_t layers) {
    namespace nn = kiln::nn;
    tok = register_module("tok", nn::Embedding(vocab, dim));
    pos = register_module("pos", nn::LearnedPositionalEmbedding(max_len, dim));
    auto layer = nn::TransformerLayerOptions(dim, heads)
                     .dim_feedforward(4 * dim)
                     .dropout(0.0)
                     .activation(nn::Activation::GELU)
                     .norm_first(true);
    body = register_module("body", nn::TransformerEncoder(nn::TransformerEncoderOptions(layer, layers)));
    head = register_module("head", nn::Linear(dim, vocab));
  }
  // ids (B, T) -> logits (B, T, vocab)
  kiln::Tensor forward(const kiln::Tensor& ids) {
    kiln::Tensor h = pos(tok(ids));
    h = body(h, kiln::nn::EncoderForward().is_causal(true));
    return head(h);
  }
  kiln::nn::Embedding tok{nullptr};
  kiln::nn::LearnedPositionalEmbedding pos{nullptr};
  kiln::nn::TransformerEncoder body{nullptr};
  kiln::nn::Linear head{nullptr};
};
KILN_MODULE(Reverser);

}  // namespace examples
