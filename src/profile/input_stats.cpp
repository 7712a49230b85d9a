#include "profile/input_stats.h"

#include "core/error.h"

namespace optiq::profile_detail {

namespace {
// Rows when there are fewer tokens than input channels: then they are both
// the smaller form and the cheaper proxy.
bool keeps_rows(int64_t cols, int64_t tokens) { return tokens < cols; }
}  // namespace

int64_t InputStats::bytes(int64_t cols, int64_t tokens) {
  return (keeps_rows(cols, tokens) ? tokens : cols) * cols * static_cast<int64_t>(sizeof(float));
}

InputStats::InputStats(Backend& be, int64_t cols, int64_t tokens)
    : be_(&be), cols_(cols), tokens_(tokens), rows_(keeps_rows(cols, tokens)) {
  check(cols > 0 && tokens >= 0, "input statistics of {} tokens x {} channels", tokens, cols);
  if (!rows_) {
    data_ = be.alloc(cols * cols);
    be.fill_zero(data_.data(), cols * cols);
  } else if (tokens > 0) {
    data_ = be.alloc(tokens * cols);
  }
}

void InputStats::add(const float* x, int64_t n) {
  check(filled_ + n <= tokens_, "input statistics: {} rows past the {} expected", filled_ + n - tokens_, tokens_);
  if (n <= 0) return;
  if (rows_) be_->take_columns(x, n, cols_, 0, cols_, data_.data() + filled_ * cols_);  // a copy
  else be_->gram_add(x, n, cols_, data_.data());
  filled_ += n;
}

double InputStats::quadratic(const float* d, int64_t rows) const {
  if (rows_) return be_->rows_quadratic(d, rows, cols_, data_.data(), filled_);
  return be_->gram_quadratic(d, rows, cols_, data_.data());
}

std::vector<double> InputStats::channel_sums() const {
  std::vector<double> s(static_cast<size_t>(cols_), 0.0);
  if (rows_) {
    std::vector<float> host;
    const float* x = data_.data();
    if (!be_->host_memory()) {
      host.resize(static_cast<size_t>(filled_ * cols_));
      be_->to_host(x, filled_ * cols_, host.data());
      x = host.data();
    }
    for (int64_t t = 0; t < filled_; ++t)
      for (int64_t k = 0; k < cols_; ++k) s[k] += static_cast<double>(x[t * cols_ + k]) * x[t * cols_ + k];
    return s;
  }
  // The Gram matrix's diagonal (an 8B down_proj's whole matrix is 0.8 GB).
  std::vector<float> diag(static_cast<size_t>(cols_));
  be_->to_host_strided(data_.data(), cols_ + 1, cols_, diag.data());
  for (int64_t k = 0; k < cols_; ++k) s[k] = diag[k];
  return s;
}

std::vector<float> InputStats::gram_on_host() const {
  std::vector<float> g(static_cast<size_t>(cols_ * cols_));
  if (!rows_) {
    be_->to_host(data_.data(), cols_ * cols_, g.data());
    return g;
  }
  Buffer sums = be_->alloc(cols_ * cols_);
  be_->fill_zero(sums.data(), cols_ * cols_);
  be_->gram_add(data_.data(), filled_, cols_, sums.data());
  be_->to_host(sums.data(), cols_ * cols_, g.data());
  return g;
}

}  // namespace optiq::profile_detail
