#include "tiue/schedule.hpp"

#include <cmath>
#include <string>

#include "tiue/error.hpp"

namespace tiue {

std::pair<double, double> ddim_step_coefficients(double alpha_t, double alpha_prev) {
  const double r = std::sqrt(alpha_prev / alpha_t);
  const double c = std::sqrt(1.0 - alpha_prev) - std::sqrt(alpha_prev) * std::sqrt(1.0 - alpha_t) / std::sqrt(alpha_t);
  return {r, c};
}

std::vector<int64_t> ddim_prev_timesteps(const std::vector<int64_t>& timesteps, int64_t num_train_timesteps) {
  std::vector<int64_t> prev;
  if (timesteps.empty()) return prev;
  const int64_t stride = num_train_timesteps / static_cast<int64_t>(timesteps.size());
  for (const int64_t t : timesteps) prev.push_back(t - stride);
  return prev;
}

OnePassCoefficients one_pass_coefficients(const std::vector<double>& alphas_cumprod, const std::vector<int64_t>& timesteps,
                                          const std::vector<int64_t>& prev_timesteps, double final_alpha_cumprod) {
  if (timesteps.size() != prev_timesteps.size())
    throw InputError(std::to_string(timesteps.size()) + " timesteps but " + std::to_string(prev_timesteps.size()) + " prev_timesteps");
  const auto n = static_cast<int64_t>(alphas_cumprod.size());
  auto alpha = [&](int64_t t) {
    if (t < 0 || t >= n) throw InputError("timestep " + std::to_string(t) + " is outside the schedule's 0.." + std::to_string(n - 1));
    return alphas_cumprod[static_cast<std::size_t>(t)];
  };
  OnePassCoefficients out;
  for (std::size_t i = 0; i < timesteps.size(); ++i) {
    const int64_t p = prev_timesteps[i];
    const auto [r, c] = ddim_step_coefficients(alpha(timesteps[i]), p >= 0 ? alpha(p) : final_alpha_cumprod);
    for (double& e : out.E) e *= r;  // fold left: z <- r z + c eps; earlier E's are scaled by later r's
    out.E.push_back(c);
    out.S *= r;
  }
  return out;
}

}  // namespace tiue
