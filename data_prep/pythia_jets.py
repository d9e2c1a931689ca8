"""Generate truth-matched jets of one class with one Pythia 8 instance and FastJet.

`generate_jets` is a pure function of (sample, class, count, seed): the same seed gives the same
jets. It runs inside a Ray task, one Pythia instance per task.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import numpy as np

from data_prep.features import (jet_four_vector, jetclass_jet_features, jetclass_particle_features,
                                jetnet_particle_features, wrap_phi)
from data_prep.detector import DetectorResponse
from data_prep.samples import Process, Sample

JET_R = 0.8
SOFTDROP_ZCUT, SOFTDROP_BETA = 0.1, 0.0
_RESONANCES = {6, 23, 24, 25}
_LEPTONS = {11, 13}


@contextlib.contextmanager
def _quiet_stdout():
    """Silence C-level stdout (FastJet prints its banner there on the first clustering)."""
    fd = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(fd, 1)
        os.close(fd)


def make_pythia(sample: Sample, process: Process, seed: int):
    import pythia8mc

    pythia = pythia8mc.Pythia("", False)
    lines = [f"Beams:eCM = {sample.ecm}", f"PhaseSpace:pTHatMin = {sample.pthat_range[0]}",
             f"PhaseSpace:pTHatMax = {sample.pthat_range[1]}", "Print:quiet = on",
             "Next:numberCount = 0", "Random:setSeed = on", f"Random:seed = {seed % 900_000_000}",
             f"PartonLevel:MPI = {'on' if sample.mpi else 'off'}",
             *sample.extra_settings, *process.settings]
    for line in lines:
        if not pythia.readString(line):
            raise RuntimeError(f"Pythia rejected setting {line!r}")
    if not pythia.init():
        raise RuntimeError(f"Pythia failed to initialise for {sample.name}/{process.label}")
    return pythia


def _decay_products(event, index: int) -> list[int]:
    """Indices of the quarks, gluons and leptons a resonance decays to (through W/Z/H/t chains)."""
    out, stack = [], [event[index].iBotCopyId()]
    while stack:
        for d in event[stack.pop()].daughterList():
            p = event[d]
            if p.idAbs() in _RESONANCES:
                stack.append(p.iBotCopyId())
            else:
                out.append(d)
    return out


def _delta_r(eta1, phi1, eta2, phi2) -> float:
    return float(np.hypot(eta1 - eta2, wrap_phi(np.asarray(phi1 - phi2))))


def _truth_candidates(event, process: Process) -> list[tuple[float, float, list[tuple[float, float]]]]:
    """(eta, phi, [(eta, phi) of visible decay products]) of each object a jet may be matched to."""
    cands = []
    if process.resonance is None:
        # The outgoing partons of the hard process (status -23), excluding the Z.
        for i in range(event.size()):
            p = event[i]
            if p.status() == -23 and (p.isQuark() or p.isGluon()):
                if process.parton == 21 and not p.isGluon():
                    continue
                if process.parton == 1 and not (p.isQuark() and p.idAbs() <= 5):
                    continue
                cands.append((p.eta(), p.phi(), [(p.eta(), p.phi())]))
        return cands
    for i in range(event.size()):
        p = event[i]
        if p.idAbs() != process.resonance or p.iBotCopyId() != i:
            continue
        prods = _decay_products(event, i)
        n_lep = sum(event[d].idAbs() in _LEPTONS for d in prods)
        if process.leptons is not None and n_lep != process.leptons:
            continue
        visible = [(event[d].eta(), event[d].phi()) for d in prods
                   if event[d].idAbs() not in (12, 14, 16)]
        cands.append((p.eta(), p.phi(), visible))
    return cands


def softdrop_mass(constituents, fastjet) -> float:
    """Soft-drop groomed mass (z_cut 0.1, beta 0) by declustering a C/A reclustering."""
    cs = fastjet.ClusterSequence(list(constituents),
                                 fastjet.JetDefinition(fastjet.cambridge_algorithm, 10.0))
    jets = cs.inclusive_jets(0.0)
    if not jets:
        return 0.0
    j = max(jets, key=lambda x: x.pt())
    p1, p2 = fastjet.PseudoJet(), fastjet.PseudoJet()
    while j.has_parents(p1, p2):
        pt1, pt2 = p1.pt(), p2.pt()
        if min(pt1, pt2) / (pt1 + pt2) > SOFTDROP_ZCUT:
            break
        j = p1 if pt1 >= pt2 else p2
        p1, p2 = fastjet.PseudoJet(), fastjet.PseudoJet()
    return max(j.m(), 0.0)


def generate_jets(sample: Sample, class_index: int, n_jets: int, seed: int,
                  progress: Callable[[int], None] | None = None,
                  max_events: int | None = None, detector: DetectorResponse | None = None) -> dict[str, np.ndarray]:
    """Simulate `n_jets` jets of class `class_index` of `sample`.

    With a `detector`, the visible particles pass its response (smearing, thresholds) before
    clustering; truth matching still uses the generator's partons.

    Returns `particles` (n, max_particles, F) float32, `n_particles` (n,), `label` (n,),
    `jet` (n, J) float32 and `events` (how many events it took). Stops early, returning fewer jets,
    only if `max_events` is reached.
    """
    import fastjet

    process = sample.processes[class_index]
    pythia = make_pythia(sample, process, seed)
    jet_def = fastjet.JetDefinition(fastjet.antikt_algorithm, JET_R)
    pt_lo, pt_hi = sample.pt_range
    parts_out, n_out, jet_out = [], [], []
    events = 0
    max_events = max_events or 200 * n_jets + 1000
    rng = np.random.default_rng(seed)
    first = True
    while len(parts_out) < n_jets and events < max_events:
        if not pythia.next():
            continue
        events += 1
        event = pythia.event
        final = [event[i] for i in range(event.size()) if event[i].isFinal() and event[i].isVisible()]
        px, py, pz, e = (np.array([getattr(p, c)() for p in final]) for c in ("px", "py", "pz", "e"))
        charge = np.array([p.charge() for p in final])
        pid = np.array([p.id() for p in final])
        if detector is not None:
            px, py, pz, e, kept = detector.apply(px, py, pz, e, charge, pid, rng)
            charge, pid = charge[kept], pid[kept]
        vecs = [fastjet.PseudoJet(*v) for v in zip(px.tolist(), py.tolist(), pz.tolist(), e.tolist())]
        for k, v in enumerate(vecs):
            v.set_user_index(k)
        if first:
            with _quiet_stdout():
                cs = fastjet.ClusterSequence(vecs, jet_def)
            first = False
        else:
            cs = fastjet.ClusterSequence(vecs, jet_def)
        jets = [j for j in fastjet.sorted_by_pt(cs.inclusive_jets(pt_lo))
                if j.pt() < pt_hi and abs(j.eta()) < sample.max_abs_eta]
        if not jets:
            continue
        cands = _truth_candidates(event, process)
        for j in jets:
            matched = any(_delta_r(j.eta(), j.phi_std(), eta, phi) < JET_R and
                          all(_delta_r(j.eta(), j.phi_std(), e2, p2) < JET_R for e2, p2 in prods)
                          for eta, phi, prods in cands)
            if not matched:
                continue
            consts = j.constituents()
            rows = np.array([c.user_index() for c in consts])
            cpx, cpy, cpz, ce = px[rows], py[rows], pz[rows], e[rows]
            pt, eta, phi, energy, mass = jet_four_vector(cpx, cpy, cpz, ce)
            if sample.name == "jetnet":
                feats, n = jetnet_particle_features(cpx, cpy, cpz, ce, pt, eta, phi, sample.max_particles)
                jet_row = np.array([pt, eta, mass, n], dtype=np.float32)
            else:
                feats, n = jetclass_particle_features(cpx, cpy, cpz, ce, charge[rows], pid[rows], pt, eta, phi,
                                                      energy, sample.max_particles)
                jet_row = jetclass_jet_features(pt, eta, phi, energy, mass,
                                                softdrop_mass(consts, fastjet), len(rows))
            parts_out.append(feats)
            n_out.append(n)
            jet_out.append(jet_row)
            if progress is not None:
                progress(1)
            if len(parts_out) >= n_jets:
                break
    n = len(parts_out)
    return {
        "particles": np.stack(parts_out) if n else np.zeros((0, sample.max_particles, len(sample.particle_features)), np.float32),
        "n_particles": np.asarray(n_out, dtype=np.int32),
        "label": np.full(n, class_index, dtype=np.int32),
        "jet": np.stack(jet_out) if n else np.zeros((0, len(sample.jet_features)), np.float32),
        "events": np.asarray(events),
    }
