"""The simulated samples: which Pythia 8 processes make which jet class, and the jet selection.

Processes follow what JetClass used where Pythia alone can do it (FORMATS.md): QCD from Z(->nunu)+jet,
H decays from ZH with Z->nunu, Z->qq from ZZ, W->qq from WW, top from ttbar. Decay switches act on
every copy of a particle in one Pythia instance, so each decay chain is its own process (own
instance); mixed final states (H->WW->lnuqq) are selected on the truth record instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raysearch.schema import (JET_FEATURES, JETCLASS_FEATURES, JETCLASS_LABELS, JETNET_FEATURES,
                              JETNET_JET_FEATURES, JETNET_LABELS, TOP_LABELS)

Z_TO_NUNU = ("23:onMode = off", "23:onIfAny = 12 14 16")
Z_ONLY = ("WeakZ0:gmZmode = 2",)
W_TO_QQ = ("24:onMode = off", "24:onIfAny = 1 2 3 4 5")
W_TO_LNU = ("24:onMode = off", "24:onIfAny = 11 13")
W_TO_ANY_LQ = ("24:onMode = off", "24:onIfAny = 1 2 3 4 5 11 13")
Z_TO_QQ = ("23:onMode = off", "23:onIfAny = 1 2 3 4 5")
ZH = ("HiggsSM:ffbar2HZ = on", "25:onMode = off") + Z_TO_NUNU + Z_ONLY
Z_PLUS_JET = ("WeakBosonAndParton:qqbar2gmZg = on", "WeakBosonAndParton:qg2gmZq = on") + Z_TO_NUNU + Z_ONLY
TTBAR = ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on")


@dataclass(frozen=True)
class Process:
    """One jet class: a Pythia process and how a jet is matched to its truth."""

    label: str
    """Class name (one of the sample's `label_names`)."""
    settings: tuple[str, ...]
    """Pythia `readString` lines that define the hard process and its decays."""
    resonance: int | None
    """|PDG id| whose decay products must all lie inside the jet; None: match the hard parton."""
    leptons: int | None = None
    """Required number of charged leptons (e, mu) among the decay products; None: any."""
    parton: int | None = None
    """For resonance=None: required |PDG id| of the matched hard parton (21 gluon, 1-5 quark: use 1)."""


@dataclass(frozen=True)
class Sample:
    """A simulated dataset: processes, beam, jet selection and the stored features."""

    name: str
    processes: tuple[Process, ...]
    label_names: tuple[str, ...]
    ecm: float
    """Centre-of-mass energy in GeV."""
    pt_range: tuple[float, float]
    """Accepted jet pT window in GeV."""
    pthat_range: tuple[float, float]
    """Pythia's hard-process pT window in GeV (a little wider than the jet window)."""
    max_abs_eta: float
    max_particles: int
    particle_features: tuple[str, ...]
    jet_features: tuple[str, ...]
    mpi: bool = True
    """Multi-parton interactions (off for the top-tagging sample, as in the reference dataset)."""
    extra_settings: tuple[str, ...] = field(default=())


JETCLASS = Sample(
    name="jetclass",
    processes=(
        Process("QCD", Z_PLUS_JET, None),
        Process("Hbb", ZH + ("25:onIfMatch = 5 -5",), 25),
        Process("Hcc", ZH + ("25:onIfMatch = 4 -4",), 25),
        Process("Hgg", ZH + ("25:onIfMatch = 21 21",), 25),
        Process("H4q", ZH + ("25:onIfMatch = 24 -24",) + W_TO_QQ, 25),
        Process("Hqql", ZH + ("25:onIfMatch = 24 -24",) + W_TO_ANY_LQ, 25, leptons=1),
        Process("Zqq", ("WeakDoubleBoson:ffbar2gmZgmZ = on",) + Z_ONLY + Z_TO_QQ, 23),
        Process("Wqq", ("WeakDoubleBoson:ffbar2WW = on",) + W_TO_QQ, 24),
        Process("Tbqq", TTBAR + W_TO_QQ, 6),
        Process("Tbl", TTBAR + W_TO_LNU, 6, leptons=1),
    ),
    label_names=JETCLASS_LABELS, ecm=13000.0, pt_range=(500.0, 1000.0),
    pthat_range=(450.0, 1100.0), max_abs_eta=2.0, max_particles=128,
    particle_features=JETCLASS_FEATURES, jet_features=JET_FEATURES,
)

# Like the Top Tagging reference dataset: 14 TeV, 550 < pT < 650 GeV, no multi-parton interactions,
# hadronic tops against QCD dijets.
TOP_TAGGING = Sample(
    name="top_tagging",
    processes=(Process("QCD", ("HardQCD:all = on",), None),
               Process("top", TTBAR + W_TO_QQ, 6)),
    label_names=TOP_LABELS, ecm=14000.0, pt_range=(550.0, 650.0), pthat_range=(500.0, 700.0),
    max_abs_eta=2.0, max_particles=128, particle_features=JETCLASS_FEATURES,
    jet_features=JET_FEATURES, mpi=False,
)

# JetNet-style: gluon, light-quark, top, W and Z jets near 1 TeV, 30 particles, relative coordinates.
JETNET = Sample(
    name="jetnet",
    processes=(
        Process("g", ("WeakBosonAndParton:qqbar2gmZg = on",) + Z_TO_NUNU + Z_ONLY, None, parton=21),
        Process("q", ("WeakBosonAndParton:qg2gmZq = on",) + Z_TO_NUNU + Z_ONLY, None, parton=1),
        Process("t", TTBAR + W_TO_QQ, 6),
        Process("w", ("WeakDoubleBoson:ffbar2WW = on",) + W_TO_QQ, 24),
        Process("z", ("WeakDoubleBoson:ffbar2gmZgmZ = on",) + Z_ONLY + Z_TO_QQ, 23),
    ),
    label_names=JETNET_LABELS, ecm=13000.0, pt_range=(800.0, 1200.0), pthat_range=(750.0, 1300.0),
    max_abs_eta=2.0, max_particles=30, particle_features=JETNET_FEATURES,
    jet_features=JETNET_JET_FEATURES,
)

SAMPLES = {s.name: s for s in (JETCLASS, TOP_TAGGING, JETNET)}
