"""The delivery skim, defined once from the analysis configuration and rendered into the ServiceX
query languages.

:func:`skim_definition` turns :class:`~utils.config.AnalysisConfig` into a small, language-neutral
description (:class:`SkimDefinition`): count requirements on object collections plus the branches
to keep. :func:`uproot_raw_query` and :func:`func_adl_query` render that one description into the
``uproot-raw`` (``UprootRaw``) and ``uproot`` (``FuncADL_Uproot``) languages, so the two always
select the same events and no cut value is ever written by hand.

The skim must never drop an event the processor could still select: jets are counted with the
loosest pT any jet-pT variation could reach (``AnalysisConfig.loosest_jet_pt``); the processor
applies the exact cuts per variation afterwards.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from utils.config import AnalysisConfig, load_analysis_config
from utils.errors import ConfigError
from utils.processing.nanoaod import READ_BRANCHES as NANOAOD_READ_BRANCHES
from utils.processing.nanoaod import SCHEMA_BRANCHES as NANOAOD_SCHEMA_BRANCHES
from utils.processing.nanoaod import nanoaod_cuts
from utils.processing.selection import READ_BRANCHES

QUERY_LANGUAGES = ("uproot-raw", "func-adl")
"""Accepted ``query_language`` values; ``func-adl`` is sent with the ``uproot`` code generator."""

CODEGEN = {"uproot-raw": "uproot-raw", "func-adl": "uproot"}
"""ServiceX code-generator name per query language."""

FUNC_ADL_TREE = "servicex"
"""Tree name the ``uproot`` (func_adl) code generator writes; ``uproot-raw`` keeps the input's."""

_OPS = (">", ">=", "<", "<=", "==", "!=")
BIT_TEST = "&"  # ObjectCut op: (<field> & <value>) != 0, for bit-mask fields such as Jet_jetId


@dataclass(frozen=True)
class ObjectCut:
    """``<collection>_<field> <op> <value>`` for each object of a collection (``abs(...)`` of the
    field when ``absolute``; op ``&``: any of the bits of ``value`` set)."""

    field: str
    op: str
    value: float
    absolute: bool = False


@dataclass(frozen=True)
class ObjectCount:
    """The number of objects of ``collection`` passing every cut in ``cuts``."""

    collection: str
    cuts: tuple[ObjectCut, ...]

    def branches(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f"{self.collection}_{c.field}" for c in self.cuts))


@dataclass(frozen=True)
class CountRequirement:
    """Per event: ``sum(counts) <op> number``."""

    counts: tuple[ObjectCount, ...]
    op: str
    number: int


@dataclass(frozen=True)
class SkimDefinition:
    """Event requirements (all must hold) and the branches the delivered files keep."""

    requirements: tuple[CountRequirement, ...]
    keep: tuple[str, ...]

    def __post_init__(self) -> None:
        for req in self.requirements:
            if req.op not in _OPS:
                raise ConfigError(f"skim requirement operator {req.op!r} is not one of {_OPS}")
            if not req.counts:
                raise ConfigError("a skim requirement needs at least one object count")
            for count in req.counts:
                if not count.cuts:
                    raise ConfigError(f"object count of {count.collection!r} needs at least one cut")
                for cut in count.cuts:
                    if cut.op not in (*_OPS, BIT_TEST):
                        raise ConfigError(f"object cut operator {cut.op!r} is not one of {(*_OPS, BIT_TEST)}")
                    if cut.op == BIT_TEST and (cut.absolute or not isinstance(cut.value, int)):
                        raise ConfigError(f"bit test on {cut.field!r} needs an integer mask, got {cut.value!r}")
        for name in self.keep:
            if not name.isidentifier():  # <collection>_<field>, or an event scalar (run, event)
                raise ConfigError(f"kept branch {name!r} is not a branch name")

    def cut_branches(self) -> tuple[str, ...]:
        names = (b for req in self.requirements for count in req.counts for b in count.branches())
        return tuple(dict.fromkeys(names))


INPUT_FORMATS = ("ntuple", "nanoaod")


def skim_definition(config: AnalysisConfig | None = None, input_format: str = "ntuple") -> SkimDefinition:
    """The delivery skim of the analysis: exactly ``n_leptons`` electrons+muons above
    ``lepton_pt_min``, at least ``min_jets`` jets above ``loosest_jet_pt`` and at least
    ``min_btags`` of those with ``btag > btag_threshold``; keep :data:`READ_BRANCHES`.
    ``input_format="nanoaod"``: :func:`nanoaod_skim_definition`."""
    cfg = config if config is not None else load_analysis_config()
    if input_format == "nanoaod":
        return nanoaod_skim_definition(cfg)
    if input_format != "ntuple":
        raise ConfigError(f"input_format={input_format!r}: allowed {list(INPUT_FORMATS)}")
    lepton_cut = (ObjectCut("pt", ">", cfg.lepton_pt_min),)
    jet_pt = ObjectCut("pt", ">", cfg.loosest_jet_pt)
    requirements = (
        CountRequirement((ObjectCount("electron", lepton_cut), ObjectCount("muon", lepton_cut)), "==", cfg.n_leptons),
        CountRequirement((ObjectCount("jet", (jet_pt,)),), ">=", cfg.min_jets),
        CountRequirement(
            (ObjectCount("jet", (jet_pt, ObjectCut("btag", ">", cfg.btag_threshold))),), ">=", cfg.min_btags
        ),
    )
    return _keeping(requirements, READ_BRANCHES)


def _keeping(requirements: tuple[CountRequirement, ...], keep: tuple[str, ...]) -> SkimDefinition:
    skim = SkimDefinition(requirements=requirements, keep=tuple(keep))
    missing = set(skim.cut_branches()) - set(skim.keep)
    if missing:  # the cuts read them anyway; keeping them makes the skim reproducible downstream
        skim = SkimDefinition(requirements, tuple(skim.keep) + tuple(sorted(missing)))
    return skim


def nanoaod_skim_definition(config: AnalysisConfig) -> SkimDefinition:
    """The delivery skim of NanoAOD inputs, from the processor's object definitions (the
    ``nanoaod`` section): exactly ``n_leptons`` selected electrons + muons with the full lepton
    definition (pT, |eta|, ``cutBased``, ``sip3d``; muons also ``tightId`` and
    ``pfRelIso04_all``: the reference's skim drops the muon ``sip3d`` cut), at least ``min_jets``
    jets passing |eta|, jet ID and pT above the loosest pT any jet variation could lift over the
    cut, and at least ``min_btags`` of them b-tagged. Keeps the processor's NanoAOD branches and
    those its schema needs."""
    cuts = nanoaod_cuts(config)
    electron = [
        ObjectCut("pt", ">", cuts.electron_pt_min),
        ObjectCut("eta", "<", cuts.electron_abs_eta_max, absolute=True),
        ObjectCut("cutBased", ">=", cuts.electron_cut_based),
        ObjectCut("sip3d", "<", cuts.electron_sip3d_max),
    ]
    muon = [
        ObjectCut("pt", ">", cuts.muon_pt_min),
        ObjectCut("eta", "<", cuts.muon_abs_eta_max, absolute=True),
        ObjectCut("sip3d", "<", cuts.muon_sip3d_max),
        ObjectCut("pfRelIso04_all", "<", cuts.muon_iso_max),
    ]
    if cuts.muon_tight_id:
        muon.insert(2, ObjectCut("tightId", "==", 1))
    max_factor = config.jet_pt_min / config.loosest_jet_pt  # the largest jet-pT variation factor
    jet = [
        ObjectCut("pt", ">", cuts.jet_pt_min / max_factor),
        ObjectCut("eta", "<", cuts.jet_abs_eta_max, absolute=True),
    ]
    if cuts.jet_id_mask:
        jet.append(ObjectCut("jetId", BIT_TEST, int(cuts.jet_id_mask)))
    btagged = (*jet, ObjectCut("btagCSVV2", ">", config.btag_threshold))
    requirements = (
        CountRequirement((ObjectCount("Electron", tuple(electron)), ObjectCount("Muon", tuple(muon))), "==",
                         config.n_leptons),
        CountRequirement((ObjectCount("Jet", tuple(jet)),), ">=", config.min_jets),
        CountRequirement((ObjectCount("Jet", btagged),), ">=", config.min_btags),
    )  # fmt: skip
    return _keeping(requirements, NANOAOD_READ_BRANCHES + NANOAOD_SCHEMA_BRANCHES)


# -- uproot-raw ----------------------------------------------------------------------------------


def _number(value: float | int) -> str:
    return repr(float(value)) if isinstance(value, float) else repr(int(value))


def _term(cut: ObjectCut, name: str) -> str:
    """One object cut on the value ``name`` (a branch, or a func_adl attribute)."""
    value = f"abs({name})" if cut.absolute else name
    if cut.op == BIT_TEST:
        return f"(({value} & {int(cut.value)}) != 0)"
    return f"({value} {cut.op} {_number(cut.value)})"


def _uproot_raw_count(count: ObjectCount) -> str:
    masks = [_term(c, f"{count.collection}_{c.field}") for c in count.cuts]
    # explicit axis=1: per-event reductions on every uproot-raw transformer version
    return f"count_nonzero({' & '.join(masks)}, axis=1)"


def uproot_raw_cut(skim: SkimDefinition) -> str:
    """The ``cut`` expression of the uproot-raw query (uproot's Python expression language)."""
    terms = []
    for req in skim.requirements:
        total = " + ".join(_uproot_raw_count(c) for c in req.counts)
        terms.append(f"(({total}) {req.op} {req.number})")
    return " & ".join(terms)


def uproot_raw_selection(skim: SkimDefinition, tree_name: str) -> list[dict]:
    """The uproot-raw query as the list of sub-queries ServiceX receives."""
    return [{"treename": tree_name, "filter_name": list(skim.keep), "cut": uproot_raw_cut(skim)}]


def uproot_raw_query(skim: SkimDefinition, tree_name: str):
    """A ``servicex.query.UprootRaw`` for ``tree_name``."""
    from servicex import query

    return query.UprootRaw(uproot_raw_selection(skim, tree_name))


# -- func_adl (uproot backend) -------------------------------------------------------------------

_PY_OPS = {">": ">", ">=": ">=", "<": "<", "<=": "<=", "==": "==", "!=": "!="}


def _func_adl_count(count: ObjectCount) -> str:
    fields = tuple(dict.fromkeys(c.field for c in count.cuts))
    record = ", ".join(f"{f!r}: e.{count.collection}_{f}" for f in fields)
    predicate = " and ".join(_term(c, f"o.{c.field}") for c in count.cuts)
    return f"{{{record}}}.Zip().Where(lambda o: {predicate}).Count()"


def func_adl_source(skim: SkimDefinition, tree_name: str) -> str:
    """The func_adl query as Python text (``EventDataset(...).Where(...)...Select(...)``)."""
    parts = [f"EventDataset('bogus.root', {tree_name!r})"]
    for req in skim.requirements:
        total = " + ".join(_func_adl_count(c) for c in req.counts)
        parts.append(f".Where(lambda e: ({total}) {_PY_OPS[req.op]} {req.number})")
    columns = ", ".join(f"{b!r}: e.{b}" for b in skim.keep)
    parts.append(f".Select(lambda e: {{{columns}}})")
    return "".join(parts)


def func_adl_qastle(skim: SkimDefinition, tree_name: str) -> str:
    """The func_adl query in qastle, the text ServiceX receives."""
    import qastle

    return qastle.python_ast_to_text_ast(qastle.insert_linq_nodes(ast.parse(func_adl_source(skim, tree_name))))


def func_adl_query(skim: SkimDefinition, tree_name: str):
    """A ``servicex.query.FuncADL_Uproot`` for ``tree_name``.

    The query is built from text (as the client's YAML loader does) because func_adl's type
    checker cannot follow the per-collection ``Zip()`` records the object cuts need.
    """
    from servicex import query

    q = query.FuncADL_Uproot()
    q.set_provided_qastle(func_adl_qastle(skim, tree_name))
    return q


def build_query(skim: SkimDefinition, query_language: str, tree_name: str):
    """The ServiceX query object for ``query_language`` (one of :data:`QUERY_LANGUAGES`)."""
    if query_language == "uproot-raw":
        return uproot_raw_query(skim, tree_name)
    if query_language == "func-adl":
        return func_adl_query(skim, tree_name)
    raise ConfigError(f"query_language {query_language!r} is not one of {list(QUERY_LANGUAGES)}")


def selection_string(skim: SkimDefinition, query_language: str, tree_name: str) -> str:
    """The selection text sent to ServiceX (part of what the client's cache hashes)."""
    return build_query(skim, query_language, tree_name).generate_selection_string()
