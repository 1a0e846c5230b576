// The key=value lines a benchmark prints, with one rule: a figure that was not measured is never
// printed as a number. A percentile of no samples, a rate over nothing, a ratio to zero or a
// NaN is reported on stderr as missing, and the benchmark exits non-zero; so a run that read
// nothing cannot pass for a fast (or slow) one. Calls that failed are counted with Error() and
// printed as errors=, and what a run left behind with Leftover(); both also fail the run.
#ifndef ISORUN_BENCH_FIGURES_H_
#define ISORUN_BENCH_FIGURES_H_

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace isorun::bench {

class Figures {
 public:
  // A count: zero is a measured value.
  void Count(std::string_view key, long long n) {
    std::printf("%.*s=%lld\n", static_cast<int>(key.size()), key.data(), n);
  }

  void Text(std::string_view key, std::string_view value) {
    std::printf("%.*s=%.*s\n", static_cast<int>(key.size()), key.data(),
                static_cast<int>(value.size()), value.data());
  }

  // A measured quantity; not finite means not measured.
  void Value(std::string_view key, double v, int decimals) {
    if (!std::isfinite(v)) return Missing(key, "not a finite number");
    std::printf("%.*s=%.*f\n", static_cast<int>(key.size()), key.data(), decimals, v);
  }

  // A quantity that is only meaningful above zero (a rate, a latency, a throughput).
  void Positive(std::string_view key, double v, int decimals) {
    if (!(v > 0)) return Missing(key, "no positive value was measured");
    Value(key, v, decimals);
  }

  // num / den; a zero or negative denominator means the reference was not measured.
  void Ratio(std::string_view key, double num, double den, int decimals) {
    if (!(den > 0)) return Missing(key, "its denominator was not measured");
    Value(key, num / den, decimals);
  }

  // The p-quantile (0..1) of samples, nearest rank.
  void Percentile(std::string_view key, std::vector<double> samples, double p, int decimals) {
    if (samples.empty()) return Missing(key, "no samples");
    std::sort(samples.begin(), samples.end());
    const size_t i = std::min(samples.size() - 1,
                              static_cast<size_t>(p * static_cast<double>(samples.size())));
    Value(key, samples[i], decimals);
  }

  void Missing(std::string_view key, std::string_view why) {
    std::fprintf(stderr, "bench: %.*s was not measured: %.*s\n", static_cast<int>(key.size()),
                 key.data(), static_cast<int>(why.size()), why.data());
    ++missing_;
  }

  // What a run left behind once everything it made was deleted (a count read from the database
  // as text): anything but 0 is a leak, counted in leaks= and failing the run.
  void Leftover(std::string_view key, std::string_view count) {
    Text(key, count);
    if (count != "0") {
      std::fprintf(stderr, "bench: %.*s is %.*s, not 0\n", static_cast<int>(key.size()),
                   key.data(), static_cast<int>(count.size()), count.data());
      ++leaks_;
    }
  }

  void Error(long long n = 1) { errors_ += n; }
  long long errors() const { return errors_; }

  // Prints errors= (always), leaks= and missing= (when any) and gives the exit code: 0 only when
  // every call worked, nothing was left behind and every figure was measured.
  int Finish() {
    Count("errors", errors_);
    if (leaks_ > 0) Count("leaks", leaks_);
    if (missing_ > 0) Count("missing", missing_);
    std::fflush(stdout);
    return errors_ == 0 && leaks_ == 0 && missing_ == 0 ? 0 : 1;
  }

 private:
  long long errors_ = 0;
  long long leaks_ = 0;
  long long missing_ = 0;
};

}  // namespace isorun::bench

#endif  // ISORUN_BENCH_FIGURES_H_
