"""MCMC with SIFlow proposals, as BlackJAX kernel modules.

- `independence`: independence Metropolis-Hastings with an `SIFlow` proposal
  (`IMHState`, `IMHInfo`, `init`, `build_kernel`, `as_top_level_api`).
- `mixed`: local BlackJAX moves (NUTS, HMC, MALA, ...) interleaved with global flow moves
  (`MixedState`, `MixedInfo`, ...).
- `run_chain`: a `lax.scan` driver for any step function.
- `adaptive`: `adaptive.run(key, logdensity_fn, initial_positions, ...)`, parallel chains whose
  warm-up trains the flow on their states while it proposes global moves, then exact MCMC with the
  frozen flow (`AdaptiveResult`).
- `SIFlowBoost`: the NumPyro entry point, `MCMC(SIFlowBoost(NUTS(model), flow), ...)`, with flow
  moves in the unconstrained space (`unconstrained_draws` maps posterior draws there); with no
  flow, `MCMC(SIFlowBoost(NUTS(model)), ...)` learns one first (`learn_flow`, `FlowLearning`).

Importing this package imports BlackJAX; `import numpyro_si` alone does not.
"""

from .._model_space import unconstrained_draws
from . import adaptive, independence, mixed
from ._chain import run_chain
from ._learning import FlowLearning, LearnedFlow, learn_flow
from .adaptive import AdaptiveResult
from .independence import GlobalMove, IMHInfo, IMHState, global_move
from .mixed import MixedInfo, MixedState
from .numpyro_kernel import SIFlowBoost, SIFlowBoostState
