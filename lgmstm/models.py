"""Where LGM lived up to eb780a7: pickles made then name ``lgmstm.models.LGM``,
and this name keeps them loading. New code imports :class:`lgmstm.LGM`."""
from .lgm import LGM

__all__ = ["LGM"]
