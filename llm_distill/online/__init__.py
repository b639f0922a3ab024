"""Online distillation: several models trained together in one run, teaching each other as they learn.

``cohort`` (the trained models as one ``nn.Module``, and who learns from whom: deep mutual learning, a co-trained
teacher), ``trainer`` (``OnlineDistillationTrainer``: each model's CE plus its divergence to the others' detached
predictions, every model checkpointed, resumed and exported as a plain ``save_pretrained`` folder).
"""

from .cohort import Cohort, co_training, mutual_learning
from .trainer import OnlineDistillationTrainer

__all__ = ["Cohort", "OnlineDistillationTrainer", "co_training", "mutual_learning"]
