#pragma once
/// nn::KVCache — the keys and values an attention layer has seen, for autoregressive decoding
/// (Flax's `decode`, Hugging Face's past_key_values). One per attention layer, preallocated to
/// (batch..., Hkv, max_length, D) key and value buffers; a forward with the cache projects only
/// the new tokens, appends their keys/values (after rotary, with grouped-query heads Hkv) and
/// attends over every cached position. Causal masking is aligned bottom-right, so T new queries
/// sit at positions length() - T .. length() - 1 and a chunk of T tokens attends correctly.
///
///   nn::MultiHeadAttention attn(nn::MultiHeadAttentionOptions(256, 8).num_kv_heads(2));
///   nn::KVCache cache = attn->make_kv_cache(/*batch=*/4, /*max_length=*/512);
///   NoGradGuard no_grad;                                        // decoding: zero-copy path
///   Tensor h = attn(prompt, nn::MhaForward().is_causal(true).cache(&cache));   // prefill (4, P, 256)
///   for (...) h = attn(next, nn::MhaForward().is_causal(true).cache(&cache));  // next (4, 1, 256)
///   cache.length();   // P + steps so far
///   cache.reset();    // a new sequence (the buffers are kept)
///
/// Under NoGradGuard (or when nothing requires grad) append() writes into the buffers and returns
/// views of them: no copy of the history. When the new keys/values require grad, it returns
/// cat(history, new) instead, so the result stays differentiable w.r.t. the new tokens (O(length)
/// copy per call); the history itself is constant (never differentiated).
#include <cstdint>
#include <utility>

#include "../core/tensor.hpp"

namespace kiln::nn {

class KVCache {
 public:
  KVCache() = default;
  /// Buffers (batch..., num_kv_heads, max_length, head_dim) for keys and (..., v_head_dim) for
  /// values, of opts' dtype (floating point) and device.
  KVCache(Shape batch, std::int64_t num_kv_heads, std::int64_t max_length, std::int64_t head_dim,
          std::int64_t v_head_dim, TensorOptions opts = {});

  bool defined() const { return k_.defined(); }
  /// Positions stored so far, and the capacity.
  std::int64_t length() const { return length_; }
  std::int64_t max_length() const { return max_length_; }
  const Shape& batch_shape() const { return batch_; }
  std::int64_t num_kv_heads() const { return heads_; }
  std::int64_t head_dim() const { return dk_; }
  std::int64_t v_head_dim() const { return dv_; }
  DType dtype() const { return k_.dtype(); }
  Device device() const { return k_.device(); }

  /// The stored keys (batch..., Hkv, length, head_dim) and values: views of the buffers.
  Tensor keys() const;
  Tensor values() const;
  /// The whole preallocated buffers (batch..., Hkv, max_length, D).
  const Tensor& key_buffer() const { return k_; }
  const Tensor& value_buffer() const { return v_; }

  /// Appends k (batch..., Hkv, L, head_dim) and v (batch..., Hkv, L, v_head_dim); returns all keys
  /// and values (length() + L positions). Throws kiln::Error on a shape, dtype or device mismatch
  /// and when length() + L > max_length() (nothing is written then).
  std::pair<Tensor, Tensor> append(const Tensor& k, const Tensor& v);
  /// Throws the error append() would for L new positions, without writing.
  void check_append(std::int64_t L) const;

  /// Forget everything (length 0); the buffers are kept and overwritten by later appends.
  void reset() { length_ = 0; }
  /// Keep only the first `length` positions (e.g. to roll back rejected speculative tokens).
  void crop(std::int64_t length);
  /// Beam search: entry i of the first batch dim becomes old entry indices[i] (int64, one per
  /// entry, repeats allowed), e.g. the beams that survived a step. Copies the stored positions.
  void reorder(const Tensor& indices);

 private:
  Shape batch_;
  std::int64_t heads_ = 0, max_length_ = 0, dk_ = 0, dv_ = 0, length_ = 0;
  Tensor k_, v_;
};

}  // namespace kiln::nn
