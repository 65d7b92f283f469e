"""numpyro_si: stochastic-interpolant generative models as NumPyro distributions."""

from . import datasets, oracle
from ._build import build_flow
from ._checkpoint import Checkpoint
from ._checks import check_data
from ._conditional import ConditionalSIFlow, ConditionedField
from ._constrained import ConstrainedSIFlow
from ._devices import data_mesh
from ._distribution import SIFlow
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
from ._fit import fit
from ._flow import AbstractFlow, Standardization
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
from ._joint_prior import JointPrior, fit_joint_prior
from ._networks import ACTIVATIONS, FieldMLP, FieldMLPSpec, FieldUNet, default_network_size
from ._objectives import (
    AbstractTimeSampler,
    BetaTime,
    UniformTime,
    denoiser_loss,
    deterministic_velocity_loss,
    sample_coupling,
    score_loss,
    velocity_loss,
)
from ._reparam import FlowReparam, sample
from ._solvers import (
    AbstractDivergence,
    AbstractSampler,
    ExactDivergence,
    HutchinsonDivergence,
    ODELikelihood,
    ODESampler,
    SDESampler,
    SolveInfo,
    SolverSettings,
)
from ._training import (
    EarlyStopping,
    Objective,
    StepPlan,
    StoppingState,
    TrainHistory,
    Validation,
    batches,
    default_optimizer,
    ema_update,
    plan_steps,
    train,
)
from ._version import __version__
