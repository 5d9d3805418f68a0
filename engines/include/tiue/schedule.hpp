// The one-pass coefficients of paper Eq. 11 as pure functions of the DDIM schedule, as
// tiue_export/schedule.py computes them (float64, the same order of operations), so that a runtime
// can recompute the manifest's S and E instead of trusting them.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace tiue {

/// (r, c) of one DDIM step with eta=0: z_prev = r z_t + c eps (paper Eqs. 7-10).
std::pair<double, double> ddim_step_coefficients(double alpha_t, double alpha_prev);

/// The timestep each DDIM step goes to, as diffusers' DDIMScheduler.step takes it:
/// t - num_train_timesteps / K (integer division); negative means final_alpha_cumprod.
std::vector<int64_t> ddim_prev_timesteps(const std::vector<int64_t>& timesteps, int64_t num_train_timesteps);

/// S and E_1..E_K of paper Eq. 11: z0 = S z_T + sum_k E[k] eps_k.
struct OnePassCoefficients {
  double S = 1.0;
  std::vector<double> E;
};

/// Eq. 11's S and E for K DDIM steps from `timesteps` to `prev_timesteps` (< 0: to
/// `final_alpha_cumprod`), folded left: S = prod r, E <- [e * r for e in E] + [c].
/// Throws InputError when the two lists differ in length or a timestep is outside alphas_cumprod.
OnePassCoefficients one_pass_coefficients(const std::vector<double>& alphas_cumprod, const std::vector<int64_t>& timesteps,
                                          const std::vector<int64_t>& prev_timesteps, double final_alpha_cumprod);

}  // namespace tiue
