"""numpyro_si: stochastic-interpolant generative models as NumPyro distributions."""

from . import datasets, oracle
from ._conditional import ConditionalSIFlow, ConditionedField
from ._constrained import ConstrainedSIFlow
from ._distribution import SIFlow, Standardization
from ._dynamics import (
    AbstractEps,
    ConstantEps,
    CustomEps,
    DecayingEps,
    Fields,
    FunctionField,
    ZeroEndsEps,
    as_eps,
)
from ._interpolants import (
    AbstractGamma,
    AbstractInterpolant,
    AbstractOneSidedInterpolant,
    BrownianGamma,
    CustomGamma,
    CustomInterpolant,
    EncoderDecoderInterpolant,
    LinearInterpolant,
    MirrorInterpolant,
    OneSidedLinearInterpolant,
    OneSidedTrigonometricInterpolant,
    OneSidedVPInterpolant,
    QuadraticGamma,
    SinSquaredGamma,
    TrigonometricInterpolant,
    VPTrigonometricInterpolant,
    ZeroGamma,
)
from ._io import load, save
from ._networks import ACTIVATIONS, FieldMLP
from ._objectives import (
    AbstractTimeSampler,
    BetaTime,
    UniformTime,
    denoiser_loss,
    sample_coupling,
    score_loss,
    v_loss,
    velocity_loss,
)
from ._reparam import FlowReparam
from ._solvers import (
    AbstractDivergence,
    AbstractSampler,
    ExactDivergence,
    HutchinsonDivergence,
    ODESampler,
    SDESampler,
    SolveInfo,
)
from ._training import check_data, default_network_size, fit
from ._version import __version__
