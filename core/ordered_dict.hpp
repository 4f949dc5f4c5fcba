#pragma once
/// kiln::OrderedDict — string keys in insertion order, what named_parameters() and
/// state_dict() return (nn::OrderedDict is the same type):
///   for (auto& [name, p] : model->named_parameters()) fmt::print("{} {}\n", name, p.numel());
///   Tensor w = model->state_dict()["fc.weight"];
#include <cstddef>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "error.hpp"

namespace kiln {

template <typename V>
class OrderedDict {
 public:
  struct Item {
    std::string key;
    V value;
  };

  OrderedDict() = default;
  OrderedDict(std::initializer_list<Item> items) {
    for (const auto& it : items) insert(it.key, it.value);
  }

  /// Adds `key`, or replaces its value in place (keeping its position).
  V& insert(std::string key, V value) {
    auto it = index_.find(key);
    if (it != index_.end()) return items_[it->second].value = std::move(value);
    index_.emplace(key, items_.size());
    items_.push_back({std::move(key), std::move(value)});
    return items_.back().value;
  }

  bool contains(const std::string& key) const { return index_.count(key) != 0; }
  V* find(const std::string& key) {
    auto it = index_.find(key);
    return it == index_.end() ? nullptr : &items_[it->second].value;
  }
  const V* find(const std::string& key) const {
    auto it = index_.find(key);
    return it == index_.end() ? nullptr : &items_[it->second].value;
  }
  /// The value for `key`; throws kiln::Error naming the key when absent.
  V& at(const std::string& key) {
    V* v = find(key);
    if (!v) throw_error("OrderedDict", "key '" + key + "' not found");
    return *v;
  }
  const V& at(const std::string& key) const { return const_cast<OrderedDict*>(this)->at(key); }
  V& operator[](const std::string& key) { return at(key); }
  const V& operator[](const std::string& key) const { return at(key); }

  /// Removes `key` if present; returns whether it was.
  bool erase(const std::string& key) {
    auto it = index_.find(key);
    if (it == index_.end()) return false;
    items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(it->second));
    index_.clear();
    for (std::size_t i = 0; i < items_.size(); ++i) index_.emplace(items_[i].key, i);
    return true;
  }
  void clear() {
    items_.clear();
    index_.clear();
  }

  std::size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  const std::vector<Item>& items() const { return items_; }
  std::vector<std::string> keys() const {
    std::vector<std::string> k;
    k.reserve(items_.size());
    for (const auto& it : items_) k.push_back(it.key);
    return k;
  }
  std::vector<V> values() const {
    std::vector<V> v;
    v.reserve(items_.size());
    for (const auto& it : items_) v.push_back(it.value);
    return v;
  }

  auto begin() { return items_.begin(); }
  auto end() { return items_.end(); }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  std::vector<Item> items_;
  std::unordered_map<std::string, std::size_t> index_;
};

}  // namespace kiln
