"""SMILES -> molecular graphs with OGB's features, OGB's scaffold split, and cycle counts.

Every molecule becomes three integer arrays, exactly as `ogb.utils.smiles2graph` makes them:
node features [n, 9] (`atom_to_feature_vector`), bond features [b, 3]
(`bond_to_feature_vector`), and edges [2, 2b] with each bond stored in both directions.
"""

from __future__ import annotations

import os
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import Pool

import networkx as nx
import numpy as np
from ogb.utils.features import atom_to_feature_vector, bond_to_feature_vector
from rdkit import Chem, RDLogger
from rdkit.Chem.Scaffolds import MurckoScaffold

from ggt_search.config import CYCLE_LENGTHS
from ggt_search.progress import progress

RDLogger.DisableLog("rdApp.*")  # we report unparsable rows ourselves, with row numbers

# Everything RDKit's full sanitization does except the valence check. A few molecules of
# ogbg-molhiv (hypervalent metal complexes) fail that check in current RDKit but were part of
# OGB's dataset, built with an older RDKit; parsed this way they featurize normally.
_PARTIAL_SANITIZE = Chem.SanitizeFlags.SANITIZE_ALL ^ Chem.SanitizeFlags.SANITIZE_PROPERTIES


@dataclass
class MolGraph:
    atoms: np.ndarray  # [n, 9] int
    bonds: np.ndarray  # [2b, 3] int, one row per directed edge
    edges: np.ndarray  # [2, 2b] int, local atom indices
    scaffold: str


def parse_smiles(smiles: str) -> Chem.Mol | None:
    """RDKit molecule, or None when even a valence-tolerant parse fails."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is not None:
        return mol
    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    if mol is None:
        return None
    mol.UpdatePropertyCache(strict=False)
    if Chem.SanitizeMol(mol, _PARTIAL_SANITIZE, catchErrors=True) != Chem.SanitizeFlags.SANITIZE_NONE:
        return None
    return mol


def canonical_smiles(smiles: str) -> str | None:
    """RDKit's canonical SMILES (the leakage guard's identity of a molecule), or None if unparsable or empty."""
    mol = parse_smiles(smiles)
    return Chem.MolToSmiles(mol) if mol is not None and mol.GetNumAtoms() else None


def scaffold_of(mol: Chem.Mol) -> str:
    """Bemis-Murcko scaffold SMILES with chirality, as OGB's split used."""
    try:
        return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=True)
    except Chem.AtomValenceException:
        # The valence-tolerant molecules above: same decomposition, tolerant property cache.
        scaffold = Chem.MurckoDecompose(mol)
        scaffold.UpdatePropertyCache(strict=False)
        return Chem.MolToSmiles(scaffold, isomericSmiles=True)


def featurize(smiles: str) -> MolGraph | None:
    mol = parse_smiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    atoms = np.array([atom_to_feature_vector(a) for a in mol.GetAtoms()], dtype=np.int64)
    edges, bonds = [], []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        feature = bond_to_feature_vector(bond)
        edges += [(i, j), (j, i)]
        bonds += [feature, feature]
    edges = np.array(edges, dtype=np.int64).T.reshape(2, -1)
    bonds = np.array(bonds, dtype=np.int64).reshape(-1, 3)
    return MolGraph(atoms, bonds, edges, scaffold_of(mol))


def scaffold_split(scaffolds: list[str], frac_train: float = 0.8, frac_valid: float = 0.1):
    """OGB's (deepchem's) deterministic scaffold split.

    Scaffold sets are sorted by size, largest first, ties broken by the larger first row
    index first; whole sets fill train up to 80%, then valid up to 90%, then test. This
    tie-break reproduces OGB's own split files of ogbg-molbbbp, -molesol and -molfreesolv
    molecule for molecule (breaking ties by the last row instead swaps a dozen molecules).
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for row, scaffold in enumerate(scaffolds):
        groups[scaffold].append(row)
    ordered = sorted(groups.values(), key=lambda rows: (len(rows), rows[0]), reverse=True)
    n = len(scaffolds)
    train, valid, test = [], [], []
    for rows in ordered:
        if len(train) + len(rows) > frac_train * n:
            if len(train) + len(valid) + len(rows) > (frac_train + frac_valid) * n:
                test += rows
            else:
                valid += rows
        else:
            train += rows
    return tuple(np.array(sorted(part), dtype=np.int64) for part in (train, valid, test))


def balanced_scaffold_split(scaffolds: list[str], seed: int, frac_train: float = 0.8, frac_valid: float = 0.1):
    """chemprop's balanced scaffold split (`scaffold_split(balanced=True)`): a seeded scaffold split,
    for variance over splits (Bouthillier et al. 2021) where OGB's split is one fixed draw.

    Scaffold sets larger than half the validation or the test size go first (so they land in
    train), each group shuffled by `seed`; whole sets then fill train up to 80%, valid up to
    10%, and the rest go to test. The scaffolds are OGB's (with chirality; chemprop's omit it).
    """
    import random

    groups: dict[str, list[int]] = defaultdict(list)
    for row, scaffold in enumerate(scaffolds):
        groups[scaffold].append(row)
    n = len(scaffolds)
    valid_size, test_size = frac_valid * n, (1 - frac_train - frac_valid) * n
    half = min(valid_size, test_size) / 2
    big = [rows for rows in groups.values() if len(rows) > half]
    small = [rows for rows in groups.values() if len(rows) <= half]
    shuffle = random.Random(seed)
    shuffle.shuffle(big)
    shuffle.shuffle(small)
    train, valid, test = [], [], []
    for rows in big + small:
        if len(train) + len(rows) <= frac_train * n:
            train += rows
        elif len(valid) + len(rows) <= valid_size:
            valid += rows
        else:
            test += rows
    return tuple(np.array(sorted(part), dtype=np.int64) for part in (train, valid, test))


def scaffold_of_smiles(smiles: str) -> str | None:
    """The scaffold of a molecule given as SMILES (None where `featurize` drops it: unparsable or empty)."""
    mol = parse_smiles(smiles)
    return scaffold_of(mol) if mol is not None and mol.GetNumAtoms() else None


def random_split(n: int, seed: int, frac_train: float = 0.8, frac_valid: float = 0.1):
    order = np.random.default_rng(seed).permutation(n)
    a, b = int(round(frac_train * n)), int(round((frac_train + frac_valid) * n))
    return np.sort(order[:a]), np.sort(order[a:b]), np.sort(order[b:])


def cycle_counts(graph: tuple[np.ndarray, int]) -> tuple[np.ndarray, np.ndarray]:
    """GSN-style substructure counts of one molecule: for each atom and each directed bond
    row, on how many simple cycles of each length (3..8) it lies.

    Every simple cycle counts, not only RDKit's smallest set of smallest rings: the two
    fusion atoms of naphthalene lie on two 6-cycles (its 10-cycle is longer than counted).
    `graph` is (edges [2b, 2] local atom indices, both directions; atom count).
    """
    edges, num_atoms = graph
    atoms = np.zeros((num_atoms, len(CYCLE_LENGTHS)), dtype=np.int64)
    bonds = np.zeros((len(edges), len(CYCLE_LENGTHS)), dtype=np.int64)
    row_of = {(int(i), int(j)): row for row, (i, j) in enumerate(edges)}
    molecule = nx.Graph(list(row_of))
    for cycle in nx.simple_cycles(molecule, length_bound=CYCLE_LENGTHS[-1]):
        column = len(cycle) - CYCLE_LENGTHS[0]
        atoms[cycle, column] += 1
        for a, b in zip(cycle, cycle[1:] + cycle[:1]):
            bonds[[row_of[(a, b)], row_of[(b, a)]], column] += 1
    return atoms, bonds


def parallel_map(fn, items: list, desc: str | None = None, serial_below: int = 2000) -> list:
    """[fn(x) for x in items], over every core this process may use, when there are enough
    items to pay for starting the processes (featurizing molpcba-sized sets is core-bound);
    `desc` names the step on its progress bar (None: no bar, the caller shows its own)."""
    cores = len(os.sched_getaffinity(0))
    with Pool(cores) if len(items) >= serial_below and cores > 1 else nullcontext() as pool:
        results = map(fn, items) if pool is None else pool.imap(fn, items, chunksize=256)  # imap keeps map's order
        return list(results if desc is None else progress(results, len(items), desc, "molecules"))
