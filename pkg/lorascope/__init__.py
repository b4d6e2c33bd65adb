"""lorascope: does rank-8 LoRA drift less than full fine-tuning, and what does serving adapters cost?"""

__version__ = "0.1.0"
