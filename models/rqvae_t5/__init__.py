"""The rqvae_t5 family: item embeddings → RQ-VAE semantic IDs → T5 with trie-constrained beam search.

:mod:`~models.rqvae_t5.family` is the family (and its stages), :mod:`~models.rqvae_t5.rqvae` the
RQ-VAE, :mod:`~models.rqvae_t5.codes` collision resolution and MQL4GRec's index files,
:mod:`~models.rqvae_t5.trie` the decoding constraints, :mod:`~models.rqvae_t5.seq2seq` the T5 side.
"""

from models.rqvae_t5.family import RQVAET5, RQVAET5Config, item_embeddings, rqvae_t5, search_space, semantic_ids

__all__ = ["RQVAET5", "RQVAET5Config", "item_embeddings", "rqvae_t5", "search_space", "semantic_ids"]
