"""Gradient propagation through self-attentive recurrences: the path expansion.

Modules: :mod:`~rsa.theory.patterns` (attention patterns), :mod:`~rsa.theory.paths`
(path sums and the mean-square DP in both random models, the loss gradient),
:mod:`~rsa.theory.bounds` (closed forms, uniform attention, the crossover),
:mod:`~rsa.theory.fixed` (uniform attention and its crossover with one fixed V),
:mod:`~rsa.theory.networks` (autograd on real models), :mod:`~rsa.theory.ladder` (a
ladder of assumptions from the random models down to autograd, on one network) and
:mod:`~rsa.theory.nonfrozen` (the exact Jacobian beyond frozen attention: the path
expansion plus rank-one attention terms, and their bound).

Derived in the chapter *Bounds on gradient propagation* (``book/bounds.ipynb``); the
four steps are those of *The paper* §3. The equations carry the labels of the notation
page (``book/notation.md``), cited below as {eq}`label`.

Indexing. Everything here is 0-based, like ``H``: position k holds the paper's
h_{k+1}. An *attention pattern* over a sequence of length L is an (L, L) array ``A``
with ``A[k, j] = alpha_j^{(k)}``, the weight step k puts on the state at position j
(j < k). Rows k >= 1 sum to one; row 0 is zero (no memory at the first step).

Equations implemented:

- (step 1, path expansion, {eq}`eq-path-expansion`; attention frozen)
  dh_k/dh_i = sum_{i <= j < k} w_{jk} J_k dh_j/dh_i with
  w_{jk} = (1[j = k-1] + alpha_j^{(k)}) / 2 and J_k = diag(phi'(z_k)) V.
  Stored as ``W[k, j] = w_{jk}`` (row = the step that receives the edge, like ``A``).
- (step 2, random-orthogonal model J_k = lam Q_k, {eq}`eq-mean-square-gradient`)
  g(i, i) = 1, g(i, t) = lam^2 sum_{i <= j < t} w_{jt}^2 g(i, j),
  g(i, t) = E||dh_t/dh_i u||^2.
- (step 3, {eq}`eq-uniform-and-sparse-bounds`) uniform attention:
  g(i, t) >= lam^2 / (4 (t-1)^2) (t 1-based); with entrywise nonnegative J_k,
  ||dh_t/dh_i|| >= the largest path product.
- (step 4, {eq}`eq-uniform-and-sparse-bounds`) a chain of d edges of attention weight
  >= 1/kappa: g >= (lam / (2 kappa))^(2d).

Added in the chapters *Bounds* and *The kappa-d tradeoff* (our results, not the paper's):

- uniform attention in O(L): g(t) = lam^2 / (4 (t-1)^2) (S(t-2) + t^2 g(t-1)), S the
  partial sums; (t-1)^2 g(i, t) -> lam^2 S_i / (4 - lam^2), S_i = sum_t g(i, t).
- the crossover t* where uniform attention starts to beat no attention, and its
  Lambert-W bracket 1 - W_{-1}(-eps sqrt(beta)) / eps, eps = ln(1/lam).
- the loss gradient: E||dL/dh_i||^2 = sum_t g(i, t) ||gamma_t||^2 with gamma_t the direct
  dl/dh_t, by the backward recursion G_i = ||gamma_i||^2 + sum_{k > i} lam_k^2 w_{ik}^2 G_k.
- one fixed orthogonal V at every step (J_k = lam_k V, V Haar): paths of equal length
  add coherently, E||dh_t/dh_i u||^2 = sum_m f_m^2 + O(1/n), f_m the sum over paths of
  m edges. Under full uniform attention in O(L^2) (prefix sums), with the crossover t*
  against no attention in that model.
- single realisations: ||dh_t/dh_i||_2 <= f(i, t) (path sum with lam_k >= ||J_k||_2),
  and the direct-edge bound sigma_min(dh_t/dh_i) >= mu_t w_{it} - lam_t sum_{i<j<t} w_{jt}
  f(i, j) (mu_k <= sigma_min(J_k)).
- beyond frozen attention (section ``bounds-nonfrozen``): d c_k / d h_j = alpha_{kj} I +
  alpha_{kj} (h_j - c_k) g_{kj}^T, g_{kj} = W_k^T (v * tanh'(a_{kj})), and the query adds
  sum_j alpha_{kj} (h_j - c_k) r_{kj}^T; the rank-one key term is at most
  alpha_{kj} ||h_j - c_k|| ||v|| ||W_k||_2, the query term spread_k ||v|| ||W_q||_2.
"""

from rsa.theory.bounds import (  # noqa: F401
    bound_no_attention,
    bound_sparse_chain,
    bound_uniform,
    crossover_estimate,
    crossover_uniform,
    local_attention_rate,
    sparse_crossover_span,
    uniform_asymptote,
    uniform_mean_square_gradient,
)
from rsa.theory.fixed import (  # noqa: F401
    crossover_fixed_uniform,
    fixed_uniform_mean_square_gradient,
    haar_trace_moments,
    loglog_slope,
    uniform_path_length_sums,
)
from rsa.theory.ladder import (  # noqa: F401
    RUNG_NAMES,
    RUNGS,
    assumption_ladder,
    jacobians_into,
    ladder_decades,
    strongest_chain,
)
from rsa.theory.networks import (  # noqa: F401
    jacobian_norms,
    loss_gradient_norms,
    loss_gradients,
    state_jacobians,
    step_jacobians,
)
from rsa.theory.nonfrozen import (  # noqa: F401
    attention_terms,
    full_path_jacobians,
    nonfrozen_norms,
    one_step_jacobian,
    query_jacobian,
)
from rsa.theory.paths import (  # noqa: F401
    chain_edges,
    direct_edge_lower_bound,
    edge_weights,
    fixed_orthogonal_mean_square_gradient,
    haar_matrices,
    loss_gradient_path_sum,
    loss_path_expansion,
    max_path_product,
    mean_square_gradient,
    mean_square_gradient_matrix,
    mean_square_loss_gradient,
    monte_carlo_gradient,
    monte_carlo_loss_gradient,
    path_jacobians,
    path_length_sums,
    path_sum,
)
from rsa.theory.patterns import (  # noqa: F401
    chain_pattern,
    pattern_from_trace,
    random_sparse_pattern,
    uniform_pattern,
    window_pattern,
)

__all__ = [
    "uniform_pattern",
    "window_pattern",
    "random_sparse_pattern",
    "chain_pattern",
    "pattern_from_trace",
    "edge_weights",
    "chain_edges",
    "path_sum",
    "mean_square_gradient",
    "mean_square_gradient_matrix",
    "path_jacobians",
    "monte_carlo_gradient",
    "max_path_product",
    "bound_no_attention",
    "bound_uniform",
    "bound_sparse_chain",
    "state_jacobians",
    "jacobian_norms",
    "loss_gradient_norms",
    "uniform_mean_square_gradient",
    "uniform_asymptote",
    "crossover_uniform",
    "crossover_estimate",
    "sparse_crossover_span",
    "local_attention_rate",
    "mean_square_loss_gradient",
    "loss_gradient_path_sum",
    "loss_path_expansion",
    "monte_carlo_loss_gradient",
    "direct_edge_lower_bound",
    "step_jacobians",
    "loss_gradients",
    "path_length_sums",
    "fixed_orthogonal_mean_square_gradient",
    "haar_matrices",
]
__all__ += [
    "uniform_path_length_sums",
    "fixed_uniform_mean_square_gradient",
    "crossover_fixed_uniform",
    "loglog_slope",
    "haar_trace_moments",
]
__all__ += ["RUNGS", "RUNG_NAMES", "assumption_ladder", "jacobians_into", "ladder_decades",
            "strongest_chain"]
__all__ += ["attention_terms", "full_path_jacobians", "nonfrozen_norms", "one_step_jacobian",
            "query_jacobian"]
