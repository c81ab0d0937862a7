"""The report's parts: claims and their statistics, figures, the headline metrics, the GAN section, the plots page."""
