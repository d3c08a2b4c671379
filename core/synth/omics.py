"""Mutation calls (MAF columns) and expression (samples x genes) for a synthetic cohort."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lungfuse.core.synth.latent import Cohort, rng_for
from lungfuse.core.synth.presets import SynthConfig

#: The lung panel with NCBI Entrez gene ids.
PANEL: dict[str, int] = {
    "EGFR": 1956, "KRAS": 3845, "TP53": 7157, "STK11": 6794, "KEAP1": 9817, "BRAF": 673,
    "MET": 4233, "ERBB2": 2064, "PIK3CA": 5290, "SMARCA4": 6597, "NF1": 4763, "RB1": 5925,
    "CDKN2A": 1029, "ALK": 238, "ROS1": 6098, "RET": 5979, "NTRK1": 4914, "NRAS": 4893,
    "NFE2L2": 4780, "PTEN": 5728, "ARID1A": 8289, "KMT2D": 8085, "SETD2": 29072,
    "U2AF1": 7307, "RBM10": 8241,
}

#: Named co-expression modules (extended with filler genes up to ``module_size``).
MODULES: dict[str, list[str]] = {
    "proliferation": ["MKI67", "TOP2A", "CCNB1", "CDK1", "BUB1", "AURKA", "PLK1", "CCNA2",
                      "MCM2", "FOXM1"],
    "immune": ["CD8A", "GZMB", "PRF1", "CXCL9", "CXCL10", "IFNG", "CD274", "LAG3"],
    "nrf2": ["NQO1", "AKR1C1", "AKR1C2", "TXNRD1", "GCLM", "SRXN1", "G6PD"],
    "lineage": ["NKX2-1", "SFTPC", "SFTPB", "NAPSA"],
}

# classification: (relative frequency among passengers, protein position needed)
CLASS_MIX: dict[str, float] = {
    "Missense_Mutation": 0.44, "Silent": 0.18, "Intron": 0.08, "3'UTR": 0.06,
    "5'UTR": 0.03, "RNA": 0.04, "Nonsense_Mutation": 0.04, "Frame_Shift_Del": 0.025,
    "Frame_Shift_Ins": 0.01, "Splice_Site": 0.02, "In_Frame_Del": 0.01,
    "In_Frame_Ins": 0.005, "Nonstop_Mutation": 0.003, "Translation_Start_Site": 0.003,
    "3'Flank": 0.01, "5'Flank": 0.01, "IGR": 0.012,
}
NON_CODING = {"Intron", "3'UTR", "5'UTR", "RNA", "3'Flank", "5'Flank", "IGR"}
AA = "ACDEFGHIKLMNPQRSTVWY"

# driver calls: (HGVSp_Short, classification, weight)
HOTSPOTS: dict[str, list[tuple[str, str, float]]] = {
    "KRAS": [("p.G12C", "Missense_Mutation", 0.4), ("p.G12V", "Missense_Mutation", 0.2),
             ("p.G12D", "Missense_Mutation", 0.15), ("p.G13C", "Missense_Mutation", 0.1),
             ("p.Q61H", "Missense_Mutation", 0.15)],
    "EGFR": [("p.L858R", "Missense_Mutation", 0.45), ("p.E746_A750del", "In_Frame_Del", 0.35),
             ("p.T790M", "Missense_Mutation", 0.08), ("p.G719S", "Missense_Mutation", 0.06),
             ("p.A767_V769dup", "In_Frame_Ins", 0.06)],
    "TP53": [("p.R175H", "Missense_Mutation", 0.2), ("p.R248Q", "Missense_Mutation", 0.15),
             ("p.R273H", "Missense_Mutation", 0.15), ("p.R249S", "Missense_Mutation", 0.1),
             ("p.R213*", "Nonsense_Mutation", 0.15), ("p.P152Lfs*28", "Frame_Shift_Del", 0.1),
             ("p.G245S", "Missense_Mutation", 0.1), ("p.X225_splice", "Splice_Site", 0.05)],
    "STK11": [("p.Q37*", "Nonsense_Mutation", 0.35), ("p.D194Y", "Missense_Mutation", 0.2),
              ("p.K84Rfs*12", "Frame_Shift_Del", 0.3), ("p.X62_splice", "Splice_Site", 0.15)],
    "KEAP1": [("p.G333C", "Missense_Mutation", 0.35), ("p.R470C", "Missense_Mutation", 0.35),
              ("p.W544*", "Nonsense_Mutation", 0.3)],
    "BRAF": [("p.V600E", "Missense_Mutation", 0.5), ("p.G469A", "Missense_Mutation", 0.5)],
    "PIK3CA": [("p.E545K", "Missense_Mutation", 0.5), ("p.H1047R", "Missense_Mutation", 0.5)],
    "MET": [("p.X1010_splice", "Splice_Site", 1.0)],
    "ERBB2": [("p.Y772_A775dup", "In_Frame_Ins", 1.0)],
    "SMARCA4": [("p.R1192*", "Nonsense_Mutation", 0.5), ("p.E514Gfs*9", "Frame_Shift_Ins", 0.5)],
    "NF1": [("p.R1362*", "Nonsense_Mutation", 0.5), ("p.L847P", "Missense_Mutation", 0.5)],
    "CDKN2A": [("p.R80*", "Nonsense_Mutation", 0.5), ("p.D84Y", "Missense_Mutation", 0.5)],
    "RB1": [("p.R320*", "Nonsense_Mutation", 0.6), ("p.M1?", "Translation_Start_Site", 0.4)],
}

MAF_COLUMNS = ("Tumor_Sample_Barcode", "Hugo_Symbol", "Variant_Classification",
               "HGVSp_Short", "t_alt_count", "t_depth", "Entrez_Gene_Id")


def dna_barcode(pid: str, i: int) -> str:
    """Tumour DNA aliquot barcode: ``<patient>-01A-11D-A<nnn>-08`` (28 characters)."""
    return f"{pid}-01A-11D-A{i % 1000:03d}-08"


def rna_barcode(pid: str, i: int) -> str:
    """Tumour RNA aliquot barcode: ``<patient>-01A-11R-A<nnn>-07`` (28 characters)."""
    return f"{pid}-01A-11R-A{i % 1000:03d}-07"


def gene_universe(cfg: SynthConfig) -> tuple[list[str], dict[str, list[int]]]:
    """Gene symbols (panel, named modules, filler ``GENE00001``...) and module members."""
    genes = list(PANEL)
    modules: dict[str, list[int]] = {}
    for name, members in MODULES.items():
        modules[name] = [len(genes) + j for j in range(len(members))]
        genes += members
    n_filler = cfg.n_genes - len(genes)
    genes += [f"GENE{j + 1:05d}" for j in range(n_filler)]
    rng = rng_for(cfg.seed, "modules")
    filler = rng.permutation(np.arange(len(genes) - n_filler, len(genes)))
    pos = 0
    names = list(MODULES) + [f"m{k}" for k in range(max(0, cfg.n_modules - len(MODULES)))]
    for name in names:
        have = modules.setdefault(name, [])
        need = max(0, cfg.module_size - len(have))
        modules[name] = have + [int(g) for g in filler[pos:pos + need]]
        pos += need
    return genes, modules


def _hgvsp(rng: np.random.Generator, cls: str) -> str | None:
    if cls in NON_CODING:
        return None
    a, b = AA[rng.integers(20)], AA[rng.integers(20)]
    p = int(rng.integers(2, 1200))
    return {
        "Missense_Mutation": f"p.{a}{p}{b if b != a else 'W'}",
        "Silent": f"p.{a}{p}=",
        "Nonsense_Mutation": f"p.{a}{p}*",
        "Frame_Shift_Del": f"p.{a}{p}{b}fs*{int(rng.integers(2, 40))}",
        "Frame_Shift_Ins": f"p.{a}{p}{b}fs*{int(rng.integers(2, 40))}",
        "Splice_Site": f"p.X{p}_splice",
        "In_Frame_Del": f"p.{a}{p}del",
        "In_Frame_Ins": f"p.{a}{p}_{b}{p + 1}ins{AA[rng.integers(20)]}",
        "Nonstop_Mutation": f"p.*{p}{b}ext*?",
        "Translation_Start_Site": "p.M1?",
    }[cls]


def mutation_rows(cfg: SynthConfig, cohort: Cohort, genes: list[str]) -> dict[str, list]:
    """All calls, sample by sample (drivers first), as MAF columns."""
    cols: dict[str, list] = {c: [] for c in MAF_COLUMNS}
    driver_genes = set(PANEL)
    others = np.array([g for g in genes if g not in driver_genes])
    panel = np.array(list(PANEL))
    classes = np.array(list(CLASS_MIX))
    probs = np.array(list(CLASS_MIX.values()))
    probs = probs / probs.sum()
    entrez = dict(PANEL)

    def add(r: np.random.Generator, sample: str, gene: str, cls: str, hgvsp: str | None,
            vaf: float) -> None:
        depth = int(r.negative_binomial(5, 5 / (5 + 110))) + 12
        alt = max(3, int(r.binomial(depth, vaf)))
        cols["Tumor_Sample_Barcode"].append(sample)
        cols["Hugo_Symbol"].append(gene)
        cols["Variant_Classification"].append(cls)
        cols["HGVSp_Short"].append(hgvsp)
        cols["t_alt_count"].append(min(alt, depth))
        cols["t_depth"].append(depth)
        cols["Entrez_Gene_Id"].append(entrez.get(gene, gene_pos.get(gene, -1) + 900001
                                                 if gene in gene_pos else 0))

    gene_pos = {g: j for j, g in enumerate(genes)}
    smoke = np.log1p(cohort.pack_years)
    smoke = (smoke - smoke.mean()) / (smoke.std() + 1e-9)
    with_calls: list[str] = []
    for i, pid in enumerate(cohort.patient_ids):
        if not cohort.has_dna[i] or cohort.zero_calls[i]:
            continue
        r = rng_for(cfg.seed, "mutations", i)
        sample = dna_barcode(pid, i)
        for g, hs in HOTSPOTS.items():
            if cohort.drivers.get(g, np.zeros(1, bool))[i]:
                w = np.array([h[2] for h in hs])
                h = hs[int(r.choice(len(hs), p=w / w.sum()))]
                add(r, sample, g, h[1], h[0], float(r.beta(8, 12)))
        n_pass = int(r.poisson(cfg.passenger_mean * np.exp(0.4 * smoke[i])))
        for _ in range(n_pass):
            u = r.random()
            if u < 0.02:  # unannotated (intergenic / intronic) calls
                cls = str(r.choice(["IGR", "Intron", "5'Flank"]))
                add(r, sample, "Unknown", cls, None, float(r.beta(2, 6)))
                continue
            if u < 0.10:  # non-protein-altering calls in driver genes: filter traps
                cls = str(r.choice(["Silent", "Intron", "3'UTR", "5'UTR"]))
                gene = str(panel[r.integers(len(panel))])
            else:
                cls = str(classes[r.choice(len(classes), p=probs)])
                gene = str(others[r.integers(len(others))])
            add(r, sample, gene, cls, _hgvsp(r, cls), float(r.beta(2, 6)))
        with_calls.append(sample)

    # make sure every classification (and an "Unknown" gene) appears at least once, so
    # filters downstream always meet the whole vocabulary, even in tiny cohorts
    if with_calls:
        r = rng_for(cfg.seed, "mutations-coverage")
        seen = set(cols["Variant_Classification"])
        for cls in classes:
            if cls not in seen:
                s = with_calls[int(r.integers(len(with_calls)))]
                gene = str(others[r.integers(len(others))])
                add(r, s, gene, str(cls), _hgvsp(r, str(cls)), float(r.beta(2, 6)))
        if "Unknown" not in cols["Hugo_Symbol"]:
            s = with_calls[int(r.integers(len(with_calls)))]
            add(r, s, "Unknown", "IGR", None, float(r.beta(2, 6)))
    return cols


def write_mutations(cfg: SynthConfig, cohort: Cohort, genes: list[str], omics: Path) -> int:
    """Write mutations.parquet and sequenced_samples.txt; return the number of calls."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = mutation_rows(cfg, cohort, genes)
    schema = pa.schema([
        ("Tumor_Sample_Barcode", pa.string()), ("Hugo_Symbol", pa.string()),
        ("Variant_Classification", pa.string()), ("HGVSp_Short", pa.string()),
        ("t_alt_count", pa.int32()), ("t_depth", pa.int32()), ("Entrez_Gene_Id", pa.int64()),
    ])
    table = pa.Table.from_pydict(cols, schema=schema)
    pq.write_table(table, omics / "mutations.parquet")
    seq = [dna_barcode(p, i) for i, p in enumerate(cohort.patient_ids) if cohort.has_dna[i]]
    (omics / "sequenced_samples.txt").write_text("".join(s + "\n" for s in seq))
    return table.num_rows


def write_expression(cfg: SynthConfig, cohort: Cohort, genes: list[str],
                     modules: dict[str, list[int]], omics: Path,
                     tick: Callable[[int], None] | None = None) -> int:
    """Write expression.parquet in row groups of ``chunk_rows`` samples; return #samples.

    Model (log2 scale): ``x[s, g] = mu_g + sum_k L[g, k] S[s, k] + sigma_g eps``, values
    written as TPM-like ``max(2^x - 1, 0)`` (float32). Module scores ``S`` of linked samples
    come from the patient's latent state (proliferation, immune, NRF2), the others are
    nuisance modules; extra unlinked samples (bench) draw all module scores at random."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n_genes = len(genes)
    rng = rng_for(cfg.seed, "expression-genes")
    mu = np.clip(rng.normal(4.0, 2.2, n_genes), -2.0, 12.0)
    sigma = rng.uniform(0.25, 0.7, n_genes)
    mu32, sigma32 = mu.astype(np.float32), sigma.astype(np.float32)
    names = list(modules)
    load = np.zeros((len(names), n_genes), np.float32)
    for k, name in enumerate(names):
        idx = np.array(modules[name], dtype=int)
        load[k, idx] = rng.uniform(0.6, 1.2, len(idx))

    linked = [i for i in range(len(cohort.patient_ids)) if cohort.has_rna[i]]
    n_rows = max(cfg.expression_samples, len(linked))

    def sample_name(row: int) -> str:
        if row < len(linked):
            i = linked[row]
            return rna_barcode(cohort.patient_ids[i], i)
        j = row - len(linked)
        block, num = divmod(j, 9999)
        return f"TCGA-X{'ABCDEFGHJKLMNPQRSTUVWXYZ'[block % 24]}-{num + 1:04d}-01A-11R-A{j % 1000:03d}-07"

    path = omics / "expression.parquet"
    if cfg.long:
        schema = pa.schema([("sample", pa.string()), ("gene", pa.string()),
                            ("value", pa.float32())])
    else:
        schema = pa.schema([("sample", pa.string())] + [(g, pa.float32()) for g in genes])
    gene_arr = pa.array(genes, pa.string())
    with pq.ParquetWriter(path, schema, write_statistics=["sample"] if not cfg.long else True,
                          compression="zstd") as writer:
        for start in range(0, n_rows, cfg.chunk_rows):
            stop = min(n_rows, start + cfg.chunk_rows)
            r = rng_for(cfg.seed, "expression-rows", start // cfg.chunk_rows)
            m = stop - start
            scores = r.normal(size=(m, len(names))).astype(np.float32)
            for row in range(start, min(stop, len(linked))):
                i = linked[row]
                lat = {"proliferation": cohort.prolif[i], "immune": cohort.immune[i],
                       "nrf2": cohort.nrf2[i]}
                for k, name in enumerate(names):
                    if name in lat:
                        scores[row - start, k] = lat[name]
            # float32 in place: one (m x genes) buffer plus the noise draw
            vals = scores @ load
            vals += mu32[None, :]
            noise = r.standard_normal(size=(m, n_genes), dtype=np.float32)
            noise *= sigma32[None, :]
            vals += noise
            del noise
            np.exp2(vals, out=vals)
            vals -= 1.0
            np.maximum(vals, 0.0, out=vals)
            samples = [sample_name(s) for s in range(start, stop)]
            if cfg.long:
                # sub-blocks of about a million rows keep the string columns small
                step = max(1, 1_000_000 // n_genes)
                for a in range(0, m, step):
                    b = min(m, a + step)
                    idx = pa.array(np.repeat(np.arange(b - a, dtype=np.int32), n_genes))
                    col = pa.DictionaryArray.from_arrays(idx, pa.array(samples[a:b], pa.string()))
                    writer.write_table(pa.table({
                        "sample": col.dictionary_decode(),
                        "gene": pa.concat_arrays([gene_arr] * (b - a)),
                        "value": pa.array(vals[a:b].reshape(-1), pa.float32()),
                    }, schema=schema))
            else:
                arrays = [pa.array(samples, pa.string())]
                arrays += [pa.array(vals[:, g]) for g in range(n_genes)]
                tbl = pa.Table.from_arrays(arrays, schema=schema)
                writer.write_table(tbl, row_group_size=cfg.chunk_rows)
            if tick is not None:
                tick(m)
    return n_rows
